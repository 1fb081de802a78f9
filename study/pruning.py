"""Pruning, in one place: where the first rung falls, the pruners, what they cost, the epoch callback.

The first rung comes from the committed fidelity measurement at the study's target
(``measured_first_rung``; bench/fidelity.py writes it by the rule of
``reports.fidelity.supported_rung``); with none, a default study does not prune. The pruners
are Optuna's, named in ``PRUNERS``; ``epoch_share`` is the share of a target run a trial costs
under one (Optuna's Hyperband bracket arithmetic, pinned to Optuna's own by a test), which
sizes a study; ``PruningCallback`` reports each epoch to the trial and stops it when told.

Usage:
    pruner = make_pruner(default_pruner(target_epochs), target_epochs)
    share = epoch_share(target_epochs, "hyperband")     # of a target run, per trial on average
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import optuna

from cifar.registry import Registry

REDUCTION_FACTOR = 3  # of the Hyperband and successive-halving pruners: one rung = 3x the epochs
# The pruners' first rung comes from the measurement at the study's target (bench/fidelity.py writes
# ``supported_rung`` by the rule of reports.fidelity.supported_rung: 16 configs at least, the better
# half not reversed, the target's best 3 kept by a halving there). With none at a target, a default
# study does not prune; a pruner asked for by hand starts at this unmeasured share of the target.
FIDELITY_RESULTS = Path(__file__).resolve().parents[1] / "results" / "bench"
UNMEASURED_RUNG_SHARE = 0.5


@functools.lru_cache(maxsize=16)
def measured_first_rung(target_epochs: int, results: Path = FIDELITY_RESULTS) -> tuple[int | None, str]:
    """The rung the committed fidelity measurement supports at this target, and why (or why none)."""
    found = [(m["configs"], path.name, m) for path in sorted(results.glob("fidelity*.json"))
             if (m := json.loads(path.read_text())).get("target_epochs") == target_epochs and "supported_rung" in m]
    if not found:
        return None, (f"no fidelity measurement at a {target_epochs}-epoch target "
                      f"(bench/fidelity.py --target-epochs {target_epochs})")
    _, name, measured = max(found, key=lambda f: f[0])  # several at one target: the one with the most configs
    return measured["supported_rung"], f"{name}: {measured['supported_rung_why']}"


def default_pruner(target_epochs: int) -> str:
    """Hyperband where a measurement supports a rung at this target, else no pruning."""
    return "hyperband" if measured_first_rung(target_epochs)[0] else "none"


def first_rung(max_epochs: int) -> int:
    """The first epoch at which a pruner may stop a trial of a ``max_epochs`` target (at least 1):
    the measured rung, else the unmeasured share."""
    rung = measured_first_rung(max_epochs)[0]
    return rung or max(1, min(max_epochs, round(UNMEASURED_RUNG_SHARE * max_epochs)))


# name -> pruner, given the most epochs a trial runs
PRUNERS: Registry[Callable[[int], optuna.pruners.BasePruner]] = Registry("pruner", {
    "hyperband": lambda max_epochs: optuna.pruners.HyperbandPruner(
        min_resource=first_rung(max_epochs), max_resource=max_epochs, reduction_factor=REDUCTION_FACTOR),
    "halving": lambda max_epochs: optuna.pruners.SuccessiveHalvingPruner(
        min_resource=first_rung(max_epochs), reduction_factor=REDUCTION_FACTOR),
    "median": lambda max_epochs: optuna.pruners.MedianPruner(
        n_startup_trials=5, n_warmup_steps=first_rung(max_epochs)),  # it may prune at that step
    "none": lambda max_epochs: optuna.pruners.NopPruner(),
})


def make_pruner(name: str, max_epochs: int) -> optuna.pruners.BasePruner:
    return PRUNERS.get(name)(max_epochs)


def halving_share(epochs: int, first: int, reduction: int = REDUCTION_FACTOR) -> float:
    """The share of a ``epochs``-epoch target that a trial runs on average under successive halving
    with rungs at ``first``, ``first`` x ``reduction``, ... below the target: every trial runs to the
    first rung and each rung promotes 1/``reduction`` of the trials that reach it (the long-run rate;
    a study's first trials are promoted more often, so a short study spends a little more)."""
    rungs = [first]
    while rungs[-1] * reduction < epochs:
        rungs.append(rungs[-1] * reduction)
    stops = [r for r in rungs if r < epochs] + [epochs]
    spent = stops[0] + sum((b - a) / reduction ** (k + 1) for k, (a, b) in enumerate(zip(stops, stops[1:])))
    return min(1.0, spent / epochs)


def epoch_share(epochs: int, pruner: str = "hyperband") -> float:
    """The share of the target's epochs a trial runs on average under ``pruner``, from its rungs
    (``halving_share``): Hyperband averages its brackets, weighted as Optuna allocates trials to
    them; the median pruner and no pruner count whole runs (the most a trial can cost)."""
    first = first_rung(epochs)
    if pruner == "halving":
        return halving_share(epochs, first)
    if pruner != "hyperband" or first >= epochs:
        return 1.0
    weights = hyperband_budgets(epochs, first)
    shares = [halving_share(epochs, first * REDUCTION_FACTOR ** i) for i in range(len(weights))]
    return sum(w * x for w, x in zip(weights, shares)) / sum(weights)


def hyperband_budgets(epochs: int, first: int, reduction: int = REDUCTION_FACTOR) -> list[int]:
    """Optuna's HyperbandPruner: one bracket per rung it may start at, and each bracket's share of
    the trials (its allocation budget, in bracket order); pinned to Optuna's own by a test."""
    n = math.floor(math.log(epochs / first, reduction)) + 1
    return [math.ceil(n * reduction ** (n - 1 - i) / (n - i)) for i in range(n)]


class PruningCallback:
    """Reports val_acc to the trial after every epoch and prunes when the pruner says so.

    After the trial's last epoch it only reports: pruning then saves nothing (the
    budget is spent), and a trial that ran its course counts as complete, with its
    value, rather than as pruned. Hyperband's top rung is the last epoch, so
    without this it "prunes" finished trials (7 of 30 in a study here). In a study of several
    objectives it reports nothing (``reports=False``): Optuna's ``Trial.report`` raises there."""

    def __init__(self, trial: optuna.Trial, last_epoch: int | None = None, reports: bool = True):
        self.trial, self.last_epoch, self.reports = trial, last_epoch, reports
        self.seconds = 0.0  # spent in Optuna (storage writes, pruner), for the overhead benchmark
        # Epochs a retried trial inherited from the trial it takes over (reported and judged there):
        # it may train them again from an earlier checkpoint, and reports them no second time.
        self.inherited: set[int] = set()

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if epoch in self.inherited or not self.reports:
            return
        start = time.perf_counter()
        try:
            self.trial.report(metrics["val_acc"], epoch)
            prune = epoch != self.last_epoch and self.trial.should_prune()
        finally:
            self.seconds += time.perf_counter() - start
        if prune:
            raise optuna.TrialPruned(f"pruned after epoch {epoch} at val_acc {metrics['val_acc']:.4f}")
