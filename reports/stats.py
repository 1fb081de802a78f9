"""Statistics of the comparison: mean ± std over seeds, Welch's t-test, a bootstrap interval.

Usage:
    cmp = compare([0.880, 0.884, 0.879], [0.901, 0.897, 0.903])
    print(cmp.difference, cmp.ci_low, cmp.ci_high, cmp.p_value)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Comparison:
    n_baseline: int
    n_tuned: int
    baseline_mean: float
    baseline_std: float       # sample standard deviation (ddof=1)
    tuned_mean: float
    tuned_std: float
    difference: float         # tuned_mean - baseline_mean
    ci_low: float             # 95% Welch confidence interval of the difference
    ci_high: float
    t_statistic: float
    p_value: float            # two-sided Welch's t-test
    bootstrap_low: float      # 95% percentile bootstrap interval of the difference
    bootstrap_high: float

    @property
    def significant(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0

    def to_dict(self) -> dict:
        return {**asdict(self), "significant": self.significant}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else math.nan


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(difference b - a, low, high) with the Welch-Satterthwaite degrees of freedom."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff = float(b.mean() - a.mean())
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return diff, diff - half, diff + half


def bootstrap_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95,
                       resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    da = rng.choice(a, (resamples, len(a))).mean(1)
    db = rng.choice(b, (resamples, len(b))).mean(1)
    low, high = np.quantile(db - da, [0.5 - level / 2, 0.5 + level / 2])
    return float(low), float(high)


def compare(baseline: Sequence[float], tuned: Sequence[float]) -> Comparison:
    """Tuned against baseline; needs at least two values on each side."""
    if len(baseline) < 2 or len(tuned) < 2:
        raise ValueError(f"need >= 2 seeds per side for a test, got {len(baseline)} and {len(tuned)}")
    bm, bs = mean_std(baseline)
    tm, ts = mean_std(tuned)
    diff, low, high = welch_interval(baseline, tuned)
    if bs == 0 and ts == 0:
        t, p = (math.inf if diff else 0.0), (0.0 if diff else 1.0)
    else:
        res = stats.ttest_ind(tuned, baseline, equal_var=False)
        t, p = float(res.statistic), float(res.pvalue)
    blow, bhigh = bootstrap_interval(baseline, tuned)
    return Comparison(len(baseline), len(tuned), bm, bs, tm, ts, diff, low, high, t, p, blow, bhigh)
