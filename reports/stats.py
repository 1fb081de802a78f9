"""Paired statistics of the comparison: both arms trained with the same seeds, compared seed by seed.

Seed ``s`` of the baseline and seed ``s`` of the tuned config share their data
split, the order of their batches and, where the architecture allows, their
initial weights; so the unit of evidence is the per-seed difference, not two
independent samples. ``paired`` reports the differences, their mean, a paired-t
95% interval and p-value, the exact sign-flip (permutation) p-value over all
2^n sign patterns, the win count, and a percentile bootstrap only from 10 seeds
up (below that it has too few distinct resamples to cover 95%). A difference
with no spread is never called significant: its t is undefined. ``noise_floor``
is the baseline's seed-to-seed standard deviation: what one run can tell.

Usage:
    cmp = paired([0.880, 0.884, 0.879], [0.901, 0.897, 0.903])
    print(cmp.difference, cmp.ci_low, cmp.ci_high, cmp.sign_flip_p, cmp.significant)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

MIN_BOOTSTRAP_SEEDS = 10
LEVEL = 0.95


@dataclass(frozen=True)
class Paired:
    n: int                        # seeds (pairs)
    baseline_mean: float
    baseline_std: float           # sample standard deviation (ddof=1): the one-run noise floor
    tuned_mean: float
    tuned_std: float
    differences: tuple[float, ...]  # tuned - baseline, seed by seed
    difference: float             # their mean
    difference_std: float
    ci_low: float                 # 95% paired-t interval of the mean difference (nan: no spread)
    ci_high: float
    t_statistic: float            # paired t (nan: no spread)
    p_value: float                # two-sided paired t-test (nan: no spread)
    sign_flip_p: float            # exact two-sided sign-flip p-value
    wins: int                     # seeds where tuned > baseline
    losses: int
    bootstrap_low: float | None = None   # 95% percentile bootstrap of the mean difference, n >= 10
    bootstrap_high: float | None = None

    @property
    def significant(self) -> bool:
        """The paired-t interval excludes zero (never with zero spread: the interval is undefined)."""
        return has_spread(self.differences) and (self.ci_low > 0 or self.ci_high < 0)

    @property
    def smallest_sign_flip_p(self) -> float:
        """The smallest p-value the exact test can give with n seeds: 2 of 2^n sign patterns."""
        return 2.0 / 2**self.n

    @property
    def noise_floor(self) -> float:
        return self.baseline_std

    def to_dict(self) -> dict:
        return {**asdict(self), "significant": self.significant, "noise_floor": self.noise_floor,
                "smallest_sign_flip_p": self.smallest_sign_flip_p}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else math.nan


def has_spread(differences: Sequence[float]) -> bool:
    """Whether the differences vary by more than float rounding (0.85 - 0.80 is not 0.86 - 0.81 in floats)."""
    d = np.asarray(differences, dtype=np.float64)
    return len(d) > 1 and float(np.ptp(d)) > 1e-9 * (1.0 + float(np.abs(d).max()))


def paired_t(differences: Sequence[float], level: float = LEVEL) -> tuple[float, float, float, float]:
    """(t, p, low, high) of the mean difference; all nan when the differences have no spread."""
    d = np.asarray(differences, dtype=np.float64)
    if not has_spread(d):
        return math.nan, math.nan, math.nan, math.nan
    res = stats.ttest_1samp(d, 0.0)
    ci = res.confidence_interval(level)
    return float(res.statistic), float(res.pvalue), float(ci.low), float(ci.high)


def sign_flip_p(differences: Sequence[float]) -> float:
    """Exact two-sided p-value of the mean difference under random signs (all 2^n patterns)."""
    d = np.asarray(differences, dtype=np.float64)
    if not d.any():
        return 1.0
    res = stats.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=np.inf,
                                 alternative="two-sided")
    return float(res.pvalue)


def bootstrap_interval(differences: Sequence[float], level: float = LEVEL, resamples: int = 10_000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of the paired differences (seeded)."""
    d = np.asarray(differences, dtype=np.float64)
    means = np.random.default_rng(seed).choice(d, (resamples, len(d))).mean(1)
    low, high = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return float(low), float(high)


def paired(baseline: Sequence[float], tuned: Sequence[float]) -> Paired:
    """Tuned against baseline, seed by seed; needs the same number (>= 2) of seeds on each side."""
    if len(baseline) != len(tuned):
        raise ValueError(f"paired comparison needs the same seeds on both sides, got {len(baseline)} "
                         f"and {len(tuned)} runs")
    if len(baseline) < 2:
        raise ValueError(f"need >= 2 seeds per side for a test, got {len(baseline)}")
    bm, bs = mean_std(baseline)
    tm, ts = mean_std(tuned)
    d = np.asarray(tuned, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    dm, dstd = mean_std(d)
    t, p, low, high = paired_t(d)
    boot = bootstrap_interval(d) if len(d) >= MIN_BOOTSTRAP_SEEDS else (None, None)
    return Paired(len(d), bm, bs, tm, ts, tuple(float(x) for x in d), dm, dstd, low, high, t, p,
                  sign_flip_p(d), int((d > 0).sum()), int((d < 0).sum()), *boot)


def expected_max(values: Sequence[float], n: int) -> float:
    """The expected best of ``n`` trials drawn from these ``N`` observed values without replacement:
    the unbiased estimator of Tang et al. (2020, "Showing Your Work Doesn't Always Work"), which
    corrects the with-replacement estimate of Dodge et al. (2019, "Show Your Work"). With the values
    sorted ascending, sum over i = n..N of v_(i) C(i-1, n-1) / C(N, n)."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    big_n = len(v)
    if not 1 <= n <= big_n:
        raise ValueError(f"expected_max needs 1 <= n <= {big_n} observed values, got n = {n}")
    weights = [math.comb(i - 1, n - 1) for i in range(n, big_n + 1)]
    return float(np.dot(v[n - 1:], weights) / math.comb(big_n, n))


def expected_max_curve(values: Sequence[float]) -> list[tuple[int, float]]:
    """(n, expected best of n trials) for n = 1..N: does the study need more trials?"""
    return [(n, expected_max(values, n)) for n in range(1, len(values) + 1)]
