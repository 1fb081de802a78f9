"""reports.race: who the race knocks out, when it stops, and what it refuses."""

from __future__ import annotations

import pytest

from reports.race import RacePlan, knocked_out_p, race


def scripted(values: dict[str, list[float]]):
    """A train_round that returns each config's next scripted validation accuracy, recording calls."""
    calls = []

    def train_round(names, seed):
        calls.append((seed, tuple(names)))  # one call per round
        return {n: values[n][len(calls) - 1] for n in names}

    return train_round, calls


def test_a_clear_loser_leaves_after_the_minimum_rounds_and_the_baseline_stays():
    values = {"baseline": [0.80, 0.79, 0.80, 0.81], "candidate 1": [0.85, 0.86, 0.855, 0.86],
              "candidate 2": [0.70, 0.72, 0.705, 0.70], "candidate 3": [0.84, 0.87, 0.83, 0.86]}
    train_round, calls = scripted(values)
    result = race(list(values), train_round, RacePlan(seeds=(1, 2, 3, 4), min_rounds=2))
    assert calls[0] == (1, tuple(values)) and calls[1] == (2, tuple(values))  # nobody leaves before round 2
    assert "candidate 2" in result.rounds[1]["knocked_out"]  # far behind: out after round 2
    assert "baseline" in result.survivors()  # the reference is never knocked out
    assert result.winner in ("candidate 1", "candidate 3") and result.winner in result.survivors()
    assert all("candidate 2" not in names for _, names in calls[2:])  # and trains no more


def test_the_race_stops_when_one_candidate_is_left():
    values = {"baseline": [0.80, 0.81, 0.80], "candidate 1": [0.85, 0.86, 0.86], "candidate 2": [0.70, 0.72, 0.7]}
    train_round, calls = scripted(values)
    result = race(list(values), train_round, RacePlan(seeds=(1, 2, 3)))
    assert result.seeds == [1, 2] and result.winner == "candidate 1"


def test_no_spread_knocks_no_one_out():
    assert knocked_out_p([0.9, 0.9], [0.8, 0.8]) == 1.0  # the t test is undefined
    assert knocked_out_p([0.9, 0.91, 0.92], [0.8, 0.8, 0.8]) < 0.05


@pytest.mark.parametrize("kwargs, match", [
    ({"seeds": (0, 1)}, "fresh"),            # seed 0 is the study's trial run
    ({"seeds": (1, 1)}, "distinct"),
    ({"seeds": (1,)}, "min_rounds"),          # one round: no spread to test or plan from
    ({"seeds": (1, 2), "alpha": 0}, "alpha"),
])
def test_bad_race_plans_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RacePlan(**kwargs)


def test_a_race_needs_the_baseline_and_a_candidate():
    with pytest.raises(ValueError, match="baseline"):
        race(["candidate 1", "candidate 2"], lambda names, seed: {}, RacePlan(seeds=(1, 2)))


def test_where_the_baseline_leads_the_best_candidate_stays_for_the_comparison():
    values = {"baseline": [0.90, 0.91, 0.905], "candidate 1": [0.80, 0.82, 0.81], "candidate 2": [0.70, 0.72, 0.7]}
    train_round, _ = scripted(values)
    result = race(list(values), train_round, RacePlan(seeds=(1, 2, 3)))
    assert result.leader == "baseline" and result.winner == "candidate 1"  # the test comparison still has one
    assert "candidate 2" in result.rounds[1]["knocked_out"] and "candidate 1" in result.survivors()
