"""Noise-aware selection: the study's top configs race on fresh validation seeds.

The study ranks its trials by one run each (seed 0), so its top few are within one
run's noise of each other (the reference CPU job's three candidates: 85.91%, 85.83%
and 85.96% over 3 seeds, the winner ahead by 0.05 points). The race gives every
contestant, the baseline included, one fresh seed per round; the study's own trial
run is the screen that admitted a candidate and counts for nothing here (it was
selected once already: winner's curse). From ``min_rounds`` on, after each round,
the leader (the highest mean validation accuracy) knocks out every candidate it
beats by a one-sided paired t test at level ``alpha`` over the rounds both ran,
as F-race (Birattari et al. 2002) and irace's t-test variant do, and SMAC's
intensification races a challenger against the incumbent on added seeds. The
baseline is never knocked out: it is the comparison's reference, and its spread
goes into the power plan; nor is the best candidate, which the comparison tests
even where the baseline leads. The race ends when one candidate is left or after its
last round; the winner is the surviving candidate with the highest mean. Only
validation accuracy is read; the caller seals the test set (``cifar.seal``).

The race's level trades budget for the risk of dropping the best config; it does
not touch the verdict's error rate, which the test comparison on its own fresh
seeds controls.

Usage:
    result = race(["baseline", "candidate 1", "candidate 2"], train_round, RacePlan(seeds=(1, 2, 3)))
    print(result.winner, result.val)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

BASELINE = "baseline"


@dataclass(frozen=True)
class RacePlan:
    seeds: tuple[int, ...]  # one fresh seed per round, in order (the study's trials ran seed 0)
    min_rounds: int = 2     # rounds every contestant runs before any is knocked out
    alpha: float = 0.05     # one-sided paired t level at which the leader knocks a candidate out

    def __post_init__(self):
        if not self.seeds or 0 in self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"race seeds must be distinct and fresh (not the study's seed 0), got {self.seeds}")
        if not 2 <= self.min_rounds <= len(self.seeds):
            raise ValueError(f"min_rounds must be in [2, {len(self.seeds)}], got {self.min_rounds}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"the race's alpha must be in (0, 1), got {self.alpha}")


@dataclass
class RaceResult:
    val: dict[str, list[float]]                   # name -> validation accuracy of each round it ran
    seeds: list[int]                              # the seeds of the rounds run
    rounds: list[dict] = field(default_factory=list)  # per round: leader, knocked out (name -> p)
    winner: str = ""                              # the surviving candidate with the highest mean
    leader: str = ""                              # the highest mean of all survivors, the baseline included
    done_at: float = 0.0                          # time.time() when the race ended

    def mean(self, name: str) -> float:
        return float(np.mean(self.val[name]))

    def std(self, name: str) -> float:
        return float(np.std(self.val[name], ddof=1)) if len(self.val[name]) > 1 else math.nan

    def survivors(self) -> list[str]:
        out = [n for n in self.val if not any(n in r["knocked_out"] for r in self.rounds)]
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def knocked_out_p(leader: Sequence[float], other: Sequence[float]) -> float:
    """One-sided paired t p-value that the leader is better (1.0 where the differences have no spread:
    the test is undefined, and an undefined test knocks no one out)."""
    d = np.asarray(leader, dtype=np.float64) - np.asarray(other, dtype=np.float64)
    if len(d) < 2 or float(np.ptp(d)) <= 1e-12:
        return 1.0
    return float(stats.ttest_1samp(d, 0.0, alternative="greater").pvalue)


def race(names: Sequence[str], train_round: Callable[[list[str], int], dict[str, float]],
         plan: RacePlan) -> RaceResult:
    """Race ``names`` (the baseline first, then the candidates); ``train_round(names, seed)`` trains
    each named config at ``seed`` and returns its validation accuracy."""
    if BASELINE not in names or len(names) < 2:
        raise ValueError(f"a race needs the baseline and at least one candidate, got {list(names)}")
    result = RaceResult(val={n: [] for n in names}, seeds=[])
    alive = list(names)
    for r, seed in enumerate(plan.seeds, 1):
        for name, acc in train_round(list(alive), seed).items():
            result.val[name].append(float(acc))
        result.seeds.append(seed)
        leader = max(alive, key=result.mean)
        best = max((n for n in alive if n != BASELINE), key=result.mean)
        out: dict[str, float] = {}
        if r >= plan.min_rounds:
            for name in alive:
                if name in (leader, best, BASELINE):
                    continue
                p = knocked_out_p(result.val[leader], result.val[name])
                if p < plan.alpha:
                    out[name] = p
        alive = [n for n in alive if n not in out]
        result.rounds.append({"seed": seed, "leader": leader, "knocked_out": out,
                              "means": {n: result.mean(n) for n in alive}})
        if len([n for n in alive if n != BASELINE]) == 1 and r >= plan.min_rounds:
            break
    candidates = [n for n in alive if n != BASELINE]
    result.winner = max(candidates, key=result.mean)
    result.leader = max(alive, key=result.mean)
    result.done_at = time.time()
    return result
