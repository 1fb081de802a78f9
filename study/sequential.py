"""The sequential comparison on the test set: seeds in rounds until better, worse or equivalent.

A group-sequential design with Lan-DeMets alpha spending of the O'Brien-Fleming
type (Lan & DeMets 1983; Jennison & Turnbull 2000, ch. 7): the pairs at each look
are fixed before the first test read (``Design.looks``), the two-sided error over
all looks is ``alpha``, and look ``k`` may spend only what the spending function
allows up to its share of the pairs. O'Brien-Fleming spending keeps almost all of
alpha for the last look, so the last look's interval is nearly as narrow as a
fixed design's with the same pairs (the minimum detectable effect costs little),
while a large effect still stops early. The boundaries are computed on the normal
scale by numerical integration over the looks (``spending_bounds``) and applied to
the paired t statistic at the same nominal level (Jennison & Turnbull, sec. 3.8):
repeated confidence intervals, one per look, that cover the true difference at
every look at once with probability about 1 - alpha. Every outcome reads off the
look's interval:

- **better**: the interval lies above zero;
- **worse**: it lies below zero;
- **equivalent**: it lies inside (-delta, +delta), the region of practical equivalence;
- **undecided**: the last look came and none of the above holds.

Why not AdaStop's permutation design: its "equal" is a failure to reject, not an
equivalence claim, and a permutation test over 3-4 new pairs per look has too few
distinct sign patterns to spend a small alpha early. The error rates of the whole
procedure are measured by simulation (``bench/verdict_calibration.py``).

Usage:
    design = Design(looks=(6, 8, 10), alpha=0.05, delta=0.003)
    look = decide(differences[:6], design)
    print(look.outcome, look.low, look.high)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize, stats
from statsmodels.stats.power import TTestPower

OUTCOMES = ("better", "worse", "equivalent", "undecided")
POWER = 0.8  # the power at which the minimum detectable effect is stated
_GRID = 801  # points of the numerical integration over the continuation region


def obf_spending(t: np.ndarray | float, alpha: float) -> np.ndarray:
    """Lan-DeMets O'Brien-Fleming-type spending of a two-sided ``alpha``, alpha/2 on each side as
    gsDesign's and rpact's symmetric designs spend it: the two-sided alpha spent by information share t."""
    t = np.asarray(t, dtype=np.float64)
    z = stats.norm.ppf(1 - alpha / 4)  # each side spends 2 - 2 Phi(z_{1 - (alpha/2)/2} / sqrt(t))
    with np.errstate(divide="ignore"):
        return np.where(t > 0, 2 * (2 - 2 * stats.norm.cdf(z / np.sqrt(np.maximum(t, 1e-300)))), 0.0)


def crossing_probabilities(bounds: Sequence[float], info: Sequence[float]) -> list[float]:
    """Under no difference, the probability of first crossing the two-sided boundary |Z_k| >= bounds[k]
    at each look k (``info``: the information at each look, increasing), by numerical integration
    of the score statistic's density over the continuation region (Armitage, McPherson and Rowe 1969)."""
    out, grid, dens = [], None, None
    prev = 0.0
    for c, i in zip(bounds, info):
        b = c * math.sqrt(i)  # the boundary on the score scale S = Z sqrt(I)
        if grid is None:
            out.append(float(2 * stats.norm.sf(c)))
        else:
            sd = math.sqrt(i - prev)
            tail = stats.norm.sf((b - grid) / sd) + stats.norm.cdf((-b - grid) / sd)
            out.append(float(np.trapezoid(dens * tail, grid)))
        # The density of S_k on the continuation region, for the next look.
        new_grid = np.linspace(-b, b, _GRID)
        if grid is None:
            dens = stats.norm.pdf(new_grid, scale=math.sqrt(i))
        else:
            sd = math.sqrt(i - prev)
            kernel = stats.norm.pdf((new_grid[:, None] - grid[None, :]) / sd) / sd
            dens = np.trapezoid(kernel * dens[None, :], grid, axis=1)
        grid, prev = new_grid, i
    return out


@functools.lru_cache(maxsize=64)
def _bounds(info: tuple[float, ...], alpha: float) -> tuple[float, ...]:
    return tuple(spending_bounds_uncached(info, alpha))


def spending_bounds(info: Sequence[float], alpha: float) -> list[float]:
    """Two-sided boundaries on the normal scale, look by look, each spending what O'Brien-Fleming-type
    spending allows at its information share (the last look's share is 1); cached."""
    return list(_bounds(tuple(float(i) for i in info), float(alpha)))


def spending_bounds_uncached(info: Sequence[float], alpha: float) -> list[float]:
    info = [float(i) for i in info]
    shares = np.array(info) / info[-1]
    spend = np.diff(np.concatenate([[0.0], obf_spending(shares, alpha)]))
    bounds: list[float] = []
    for k, target in enumerate(spend):
        if target <= 1e-15:  # nothing to spend this early: a boundary no statistic reaches
            bounds.append(40.0)
            continue

        def excess(c: float, k: int = k, target: float = target) -> float:
            return crossing_probabilities([*bounds, c], info[: k + 1])[-1] - target

        bounds.append(float(optimize.brentq(excess, 0.5, 40.0, xtol=1e-7)))
    return bounds


T_SIMULATIONS = 400_000  # sequences of the t-scale calibration: its alpha is exact to about +-0.0004


@functools.lru_cache(maxsize=64)
def _t_bounds(looks: tuple[int, ...], alpha: float, sims: int, seed: int) -> tuple[float, ...]:
    spend = np.diff(np.concatenate([[0.0], obf_spending(np.array(looks) / looks[-1], alpha)]))
    x = np.random.default_rng(seed).standard_normal((sims, looks[-1]), dtype=np.float32).astype(np.float64)
    s1, s2 = np.cumsum(x, axis=1), np.cumsum(x * x, axis=1)
    alive, out = np.ones(sims, dtype=bool), []
    for i, (n, target) in enumerate(zip(looks, spend)):
        mean = s1[:, n - 1] / n
        sd = np.sqrt(np.maximum(s2[:, n - 1] - n * mean * mean, 1e-300) / (n - 1))
        t = np.abs(mean / (sd / math.sqrt(n)))
        k = int(round(target * sims))  # the sequences this look may reject, of all
        candidates = np.sort(t[alive])[::-1]
        if i == 0 and target > 0:  # the first look is a plain t test: its bound is exact
            c = float(stats.t.ppf(1 - target / 2, n - 1))
        else:
            c = float(candidates[k]) if 0 < k < len(candidates) else 1e6  # nothing to spend: none reaches it
        out.append(c)
        alive &= t < c
    return tuple(out)


def t_spending_bounds(looks: Sequence[int], alpha: float, sims: int = T_SIMULATIONS, seed: int = 0) -> list[float]:
    """Two-sided boundaries for the paired t statistic at each look that spend, look by look, what
    ``obf_spending`` allows. The normal-scale boundaries assume a known variance; with the variance
    estimated from a few pairs, the same nominal level at every look lets through more than alpha in
    all (5.3% at looks 6, 8, 10). With no true difference the joint law of the looks' t statistics
    does not depend on the noise, so the boundaries are found by a seeded simulation of it (``sims``
    sequences of standard normal differences; cached)."""
    return list(_t_bounds(tuple(int(n) for n in looks), float(alpha), sims, seed))


@dataclass(frozen=True)
class Design:
    looks: tuple[int, ...]   # pairs of seeds at each look, increasing; the last is the budget
    alpha: float = 0.05      # two-sided error over all looks together
    delta: float = 0.003     # equivalence margin, in accuracy (0.003 = 0.3 points)

    def __post_init__(self):
        if not self.looks or any(b <= a for a, b in zip(self.looks, self.looks[1:])) or self.looks[0] < 2:
            raise ValueError(f"looks must be increasing pair counts from 2 up, got {self.looks}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if not self.delta > 0:
            raise ValueError(f"the equivalence margin must be > 0, got {self.delta}")

    def t_bounds(self) -> list[float]:
        """The boundaries on the scale of the paired t statistic, spending the same alpha per look."""
        return t_spending_bounds(self.looks, self.alpha)

    def nominal_alphas(self) -> list[float]:
        """The two-sided level each look's interval is built at (its t boundary as a t-test level)."""
        return [float(2 * stats.t.sf(c, n - 1)) for c, n in zip(self.t_bounds(), self.looks)]


@dataclass(frozen=True)
class Look:
    n: int                  # pairs so far
    mean: float             # mean difference (tuned - baseline)
    std: float              # their standard deviation (nan below 2 pairs)
    level: float            # two-sided nominal level of this look's interval
    low: float              # the repeated confidence interval of the mean difference
    high: float
    outcome: str | None     # better / worse / equivalent, undecided at the last look, None: go on
    last: bool              # the design's last look

    def to_dict(self) -> dict:
        return asdict(self)


@functools.lru_cache(maxsize=1024)
def _t_quantile(q: float, df: int) -> float:
    return float(stats.t.ppf(q, df))


def interval(differences: Sequence[float], critical: float) -> tuple[float, float, float, float]:
    """(mean, std, low, high): the interval of the mean difference, ``critical`` standard errors wide on
    each side (a look's t-scale bound)."""
    d = np.asarray(differences, dtype=np.float64)
    n, mean = len(d), float(d.mean())
    std = float(d.std(ddof=1)) if n > 1 else math.nan
    if n < 2 or not std > 0:
        return mean, std, math.nan, math.nan
    half = critical * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


def outcome_of(low: float, high: float, delta: float) -> str | None:
    """What an interval decides (better and worse before equivalent), or None."""
    if math.isnan(low):
        return None
    if low > 0:
        return "better"
    if high < 0:
        return "worse"
    if -delta < low and high < delta:
        return "equivalent"
    return None


def decide(differences: Sequence[float], design: Design) -> Look:
    """The look at ``len(differences)`` pairs, which must be one of the design's looks."""
    n = len(differences)
    if n not in design.looks:
        raise ValueError(f"{n} pairs is not a look of the design {design.looks}")
    k = design.looks.index(n)
    level = design.nominal_alphas()[k]
    mean, std, low, high = interval(differences, design.t_bounds()[k])
    last = k == len(design.looks) - 1
    outcome = outcome_of(low, high, design.delta)
    return Look(n, mean, std, level, low, high, outcome or ("undecided" if last else None), last)


@functools.lru_cache(maxsize=256)
def detectable_effect(n: int, level: float, power: float = POWER) -> float:
    """The standardised effect (mean / std) a paired t test at two-sided ``level`` with ``n`` pairs
    detects with probability ``power`` (statsmodels' TTestPower); cached, it depends on no data."""
    return float(TTestPower().solve_power(nobs=n, alpha=level, power=power, alternative="two-sided"))


def mde(std: float, n: int, level: float, power: float = POWER) -> float:
    """The smallest true mean difference a paired t test at two-sided ``level`` with ``n`` pairs of
    standard deviation ``std`` detects with probability ``power``."""
    if n < 2 or not std > 0:
        return math.nan
    return detectable_effect(n, level, power) * std


def pairs_needed(effect: float, std: float, level: float, power: float = POWER) -> float:
    """Pairs a paired t test at ``level`` needs to detect ``effect`` with ``power`` (inf: no effect)."""
    if not effect > 0 or not std > 0:
        return math.inf
    return float(TTestPower().solve_power(effect_size=effect / std, alpha=level, power=power,
                                          alternative="two-sided"))


def pairs_for_equivalence(mean: float, std: float, level: float, delta: float) -> float:
    """Pairs after which an interval around ``mean`` with this spread would lie inside +-delta."""
    room = delta - abs(mean)
    if room <= 0 or not std > 0:
        return math.inf
    n = 2
    while _t_quantile(1 - level / 2, n - 1) * std / math.sqrt(n) >= room:
        n += 1
        if n > 100_000:
            return math.inf
    return float(n)
