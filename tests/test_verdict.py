"""reports.verdict: the plan from the race, the looks, effect sizes against published examples, a real A/A."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from reports.race import RaceResult
from reports.verdict import (
    COMPARISON_SEED0,
    Plan,
    bayes_probs,
    compare,
    make_plan,
    p_better,
    pooled_std,
    power_text,
)
from tests.test_reports import SLEEP_1, SLEEP_2


def race_with(val: dict[str, list[float]]) -> RaceResult:
    return RaceResult(val=val, seeds=[1, 2, 3], winner="candidate 1", leader="candidate 1")


RACE = race_with({"baseline": [0.850, 0.853, 0.848], "candidate 1": [0.856, 0.859, 0.857],
                  "candidate 2": [0.852, 0.850, 0.855]})


def test_pooled_std_against_a_hand_count():
    # groups (1, 3) and (2, 4, 6): squares 2 and 8 over 1 + 2 degrees of freedom
    assert pooled_std([[1, 3], [2, 4, 6], [5]]) == (pytest.approx(math.sqrt(10 / 3)), 3)


def test_the_plan_comes_from_the_race_and_names_its_seeds():
    plan = make_plan(RACE, (6, 8, 10))
    assert plan.seeds == tuple(range(COMPARISON_SEED0, COMPARISON_SEED0 + 10))
    assert plan.run_std_df == 6 and plan.diff_std == pytest.approx(plan.run_std * math.sqrt(2))
    # The margin: what retraining one config changes, one run's noise x sqrt(2) (the race's, unless given
    # the noise measured for the target on many seeds).
    assert plan.delta == pytest.approx(round(plan.run_std * math.sqrt(2), 4)) and "race" in plan.delta_source
    measured = make_plan(RACE, (6, 8, 10), noise=(0.003, "8 seeds"))
    assert measured.delta == pytest.approx(0.0042) and "8 seeds" in measured.delta_source
    # What "equivalent" would take with no true difference: more pairs for a narrower margin.
    assert 2 < measured.equivalence_pairs < make_plan(RACE, (6, 8, 10), delta=0.002).equivalence_pairs < math.inf
    assert 0 < plan.mde < plan.mde_first  # more pairs detect less
    assert make_plan(RACE, (6, 8), delta=0.002).delta == 0.002
    assert "0.2" in power_text(make_plan(RACE, (6, 8), delta=0.002))
    with pytest.raises(ValueError, match="spread"):
        make_plan(race_with({"baseline": [0.8], "candidate 1": [0.81]}), (6, 8))


def fixed_plan(looks=(3, 4, 5), delta=0.003) -> Plan:
    return Plan(looks, tuple(range(100, 100 + looks[-1])), 0.05, delta, "test", 0.002, 10, 0.0028, 0.004, 0.008)


def test_compare_trains_only_up_to_the_deciding_look():
    trained = []

    def pair(seed):
        trained.append(seed)
        return 0.80, 0.85 + 0.001 * (seed % 3)  # a large, steady gain

    verdict = compare(fixed_plan(), pair)
    assert verdict.outcome == "better" and trained == [100, 101, 102] and len(verdict.looks) == 1
    assert verdict.p_better[0] == 1.0 and verdict.bayes[2] > 0.99 and math.isnan(verdict.more_pairs)


def test_the_comparison_stops_at_the_first_decision():
    differences = [0.01, 0.011, 0.012, -0.5, -0.5]
    plan = fixed_plan(looks=(3, 4, 5), delta=0.001)
    verdict = compare(plan, lambda seed: (0.0, differences[seed - plan.seeds[0]]), effect_sizes=False)
    assert [lk.n for lk in verdict.looks] == [3] and verdict.looks[0].outcome == "better"


def test_an_undecided_comparison_says_what_a_decision_would_need():
    rng = np.random.default_rng(0)
    verdict = compare(fixed_plan(delta=0.0001), lambda seed: (0.80 + rng.normal(0, 0.01), 0.80 + rng.normal(0, 0.01)))
    assert verdict.outcome == "undecided" and len(verdict.looks) == 3 and verdict.last.last
    assert verdict.more_pairs > 0


def test_p_better_is_the_mann_whitney_share_of_run_pairs():
    tuned, base = [0.86, 0.85, 0.87, 0.84], [0.85, 0.83, 0.84, 0.82]
    u = stats.mannwhitneyu(tuned, base).statistic  # ties count half in scipy's U as well
    est, low, high = p_better(tuned, base)
    assert est == pytest.approx(u / 16) and low <= est <= high
    assert p_better([0.9, 0.91], [0.8, 0.81])[0] == 1.0
    # Every tuned run ahead: the estimate is 1, its interval does not collapse onto it ...
    est, low, high = p_better([0.9] * 6, [0.8] * 6)
    assert est == high == 1.0 and 0.5 < low < 0.9
    # ... and narrows with more runs.
    assert p_better([0.9] * 12, [0.8] * 12)[1] > low


def test_bayesian_view_against_the_t_test():
    # Benavoli et al. (2017), "Time for a change", sec. 4: with a flat prior the posterior probability
    # of a negative mean difference is the one-sided p-value of the t test. Student's sleep data:
    # R's t.test(extra ~ group, paired = TRUE) gives two-sided p = 0.002833 for drug 1 - drug 2.
    d = np.subtract(SLEEP_1, SLEEP_2)
    worse, rope, better = bayes_probs(d, 0.0)
    assert better == pytest.approx(0.002833 / 2, abs=1e-6) and rope == pytest.approx(0.0)
    worse, rope, better = bayes_probs(d, 0.5)
    assert worse + rope + better == pytest.approx(1.0) and worse > 0.9


def test_a_real_a_a_comparison_on_tiny_data_decides_nothing_wrong(tiny_data, tmp_path):
    """The baseline against itself on independent seed streams, trained for real: never better or worse."""
    from reports.runs import ensure_tested, ensure_trained
    from tests.conftest import tiny_config

    cfg = tiny_config(epochs=2)
    plan = fixed_plan(looks=(3, 4, 5), delta=0.05)

    def pair(seed):
        dirs = {"baseline": ensure_trained({"a": cfg}, [seed], tmp_path, tiny_data)["a"],
                "tuned": ensure_trained({"a": cfg}, [seed + 500], tmp_path, tiny_data)["a"]}  # another stream
        ensure_tested(dirs, ["baseline", "tuned"], tiny_data)
        from cifar.rundir import RunDir

        return tuple(RunDir(dirs[n][0]).read_test_metrics().test_acc for n in ("baseline", "tuned"))

    verdict = compare(plan, pair)
    assert verdict.outcome in ("equivalent", "undecided")
    assert any(d != 0 for d in verdict.differences)  # the streams differ: a real A/A, not one run twice
