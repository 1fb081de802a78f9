"""study.sequential: group-sequential boundaries against published tables, and the four outcomes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize

from study.sequential import (
    Design,
    crossing_probabilities,
    decide,
    mde,
    outcome_of,
    pairs_for_equivalence,
    pairs_needed,
    spending_bounds,
    t_spending_bounds,
)


def _constant(k: int, shape) -> float:
    """The constant C of a classical design whose look-j boundary is C * shape(j, k), at alpha 0.05."""
    def excess(c: float) -> float:
        return sum(crossing_probabilities([c * shape(j, k) for j in range(1, k + 1)], list(range(1, k + 1)))) - 0.05

    return optimize.brentq(excess, 1.0, 5.0)


@pytest.mark.parametrize("k, pocock, obrien_fleming", [
    # Jennison & Turnbull (2000), Group Sequential Methods, Table 2.1 (Pocock's C_P) and Table 2.3
    # (O'Brien & Fleming's C_B), two-sided alpha = 0.05, equally spaced looks.
    (1, 1.960, 1.960),
    (2, 2.178, 1.977),
    (3, 2.289, 2.004),
    (4, 2.361, 2.024),
    (5, 2.413, 2.040),
])
def test_crossing_probabilities_give_the_published_classical_constants(k, pocock, obrien_fleming):
    assert _constant(k, lambda j, k: 1.0) == pytest.approx(pocock, abs=6e-4)
    assert _constant(k, lambda j, k: math.sqrt(k / j)) == pytest.approx(obrien_fleming, abs=6e-4)


def test_spending_bounds_match_rpact_and_gsdesign():
    # rpact: getDesignGroupSequential(kMax = 3, alpha = 0.025, sided = 1, typeOfDesign = "asOF")
    # -> critical values 3.710, 2.511, 1.993 (gsDesign's sfLDOF gives the same); two-sided 0.05 is
    # alpha/2 on each side.
    assert spending_bounds([1, 2, 3], 0.05) == pytest.approx([3.710, 2.511, 1.993], abs=1e-3)
    assert spending_bounds([5], 0.05) == pytest.approx([1.960], abs=1e-3)  # one look: the fixed design
    # A look's boundary depends on its share of the last look's pairs, not on the looks after it.
    assert spending_bounds([6, 10], 0.05)[0] == pytest.approx(spending_bounds([6, 8, 10], 0.05)[0])
    assert spending_bounds([6, 10], 0.05)[0] != pytest.approx(spending_bounds([6, 8], 0.05)[0])


def test_one_look_on_the_t_scale_is_the_t_test():
    # Student's t table: t(0.975, 5 df) = 2.571; a single look spends all of alpha there.
    assert t_spending_bounds([6], 0.05) == [pytest.approx(2.5706, abs=1e-4)]


@pytest.mark.parametrize("looks", [(6, 8, 10), (6, 8, 10, 12), (3, 4)])
def test_no_difference_is_called_better_or_worse_in_at_most_alpha_of_sequences(looks):
    """An independent simulation (another seed, another way of counting) of the t-scale rule under no
    difference: the share of sequences that ever cross a look's bound. The normal-scale levels applied
    to t statistics let through 5.3-5.5% here; the t-scale bounds must not."""
    rng = np.random.default_rng(2024)
    bounds, sims = Design(looks).t_bounds(), 200_000
    x = rng.standard_normal((sims, looks[-1]))
    crossed = np.zeros(sims, dtype=bool)
    for n, c in zip(looks, bounds):
        t = np.abs(x[:, :n].mean(1) / (x[:, :n].std(1, ddof=1) / math.sqrt(n)))
        crossed |= t >= c
    se = math.sqrt(0.05 * 0.95 / sims)
    assert crossed.mean() <= 0.05 + 3 * se
    assert crossed.mean() >= 0.05 - 4 * se  # and spends it: not a needlessly conservative rule


@pytest.mark.parametrize("low, high, delta, outcome", [
    (0.001, 0.009, 0.003, "better"),       # above zero
    (-0.009, -0.001, 0.003, "worse"),      # below zero
    (-0.002, 0.002, 0.003, "equivalent"),  # inside +-delta
    (0.0005, 0.002, 0.003, "better"),      # above zero and inside the margin: better comes first
    (-0.004, 0.002, 0.003, None),          # crosses zero and leaves the margin: go on
    (math.nan, math.nan, 0.003, None),     # no spread: no interval, no decision
])
def test_outcome_of_an_interval(low, high, delta, outcome):
    assert outcome_of(low, high, delta) == outcome


def test_decide_at_a_look_and_undecided_at_the_last():
    design = Design((3, 4), alpha=0.05, delta=0.001)
    assert decide([0.01, 0.012, 0.011], design).outcome == "better"
    undecided = decide([0.01, -0.01, 0.012, -0.011], design)
    assert undecided.outcome == "undecided" and undecided.last
    assert decide([0.01, -0.01, 0.012], design).outcome is None  # the first look goes on
    with pytest.raises(ValueError, match="not a look"):
        decide([0.01, 0.02], design)


@pytest.mark.parametrize("looks", [(), (1, 2), (6, 6), (8, 6)])
def test_bad_designs_are_refused(looks):
    with pytest.raises(ValueError, match="looks"):
        Design(looks)


def test_power_against_published_sample_sizes():
    # Cohen (1988) / G*Power: a one-sample (paired) t test of effect d = 0.5 at two-sided 0.05 needs
    # 34 pairs for 80% power (G*Power 3.1: total sample size 34, actual power 0.808).
    assert math.ceil(pairs_needed(0.5, 1.0, 0.05)) == 34
    assert mde(1.0, 34, 0.05) == pytest.approx(0.4933, abs=2e-3)  # the effect 34 pairs detect at 80%
    assert pairs_needed(0.0, 1.0, 0.05) == math.inf


def test_pairs_for_equivalence():
    assert pairs_for_equivalence(0.004, 0.003, 0.05, 0.003) == math.inf  # the mean is already outside
    n = pairs_for_equivalence(0.0, 0.003, 0.05, 0.003)
    assert 5 < n < 10  # t(0.975, n - 1) / sqrt(n) < 1 from n = 7
