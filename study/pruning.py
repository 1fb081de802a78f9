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
from dataclasses import dataclass
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
    # a study of several objectives: Optuna's pruners cannot judge it; ParetoHalving does, in the callback
    "pareto": lambda max_epochs: optuna.pruners.NopPruner(),  # ParetoHalving(beaten=1, ranked_by="own")
    "pareto-front": lambda max_epochs: optuna.pruners.NopPruner(),  # ParetoHalving(beaten=1)
    "pareto-front-own": lambda max_epochs: optuna.pruners.NopPruner(),  # the same rule as pareto
    "pareto-third": lambda max_epochs: optuna.pruners.NopPruner(),  # ParetoHalving(): the top third
})


def make_pruner(name: str, max_epochs: int) -> optuna.pruners.BasePruner:
    return PRUNERS.get(name)(max_epochs)


def rungs_below(epochs: int, first: int, reduction: int = REDUCTION_FACTOR) -> list[int]:
    """The rungs of successive halving under an ``epochs`` target: ``first``, x ``reduction``, ..."""
    rungs = [first]
    while rungs[-1] * reduction < epochs:
        rungs.append(rungs[-1] * reduction)
    return [r for r in rungs if r < epochs]


def halving_share(epochs: int, first: int, reduction: int = REDUCTION_FACTOR) -> float:
    """The share of a ``epochs``-epoch target that a trial runs on average under successive halving
    with rungs at ``first``, ``first`` x ``reduction``, ... below the target: every trial runs to the
    first rung and each rung promotes 1/``reduction`` of the trials that reach it (the long-run rate;
    a study's first trials are promoted more often, so a short study spends a little more)."""
    stops = rungs_below(epochs, first, reduction) + [epochs]
    spent = stops[0] + sum((b - a) / reduction ** (k + 1) for k, (a, b) in enumerate(zip(stops, stops[1:])))
    return min(1.0, spent / epochs)


# ParetoHalving's first rung: a quarter of the target (one epoch of four), as MOASHA's grace period
# is one epoch. Not the fidelity measurement's rung: that one asks whether rung accuracy ranks
# configs of one architecture; here a trial competes only with trials that cost no more, and what
# the early rung costs the front is measured directly (bench/pareto_pruning.py: hypervolume against
# the unpruned study on the same sampler seed).
PARETO_FIRST_RUNG_SHARE = 0.25


# The pruners by cost, each a ParetoHalving rule: (beaten: None for the top 1/reduction, 1 for the rung's
# front; ranked_by: the costs a rung ranks trials by, "plain" at TTA level 0 or each trial's "own").
# ``pareto``: beaten by 1 cheaper at each trial's own costs, adopted as planned once it saved 40.6% of the
# trial-epochs at a hypervolume ratio of 0.982 on a fresh sampler seed (results/bench/pareto_pruning-seed3x32.json,
# where it ran as ``pareto-front-own``); before, ``pareto`` was the top third at plain costs, now ``pareto-third``.
COST_PRUNERS = {"pareto": (1, "own"), "pareto-front": (1, "plain"), "pareto-front-own": (1, "own"),
                "pareto-third": (None, "plain")}
# The rule of a study made before its rule was recorded (no "pruner_rule" attribute), by its pruner's name then.
RULES_BEFORE = {**COST_PRUNERS, "pareto": (None, "plain")}


def stored_rule(attrs: dict) -> tuple[int | None, str] | None:
    """The (beaten, ranked_by) rule a stored study's cost pruner ran (None: not a cost pruner)."""
    if attrs.get("pruner_rule"):
        return tuple(attrs["pruner_rule"])
    return RULES_BEFORE.get(attrs.get("pruner"))


def rule_conflict(attrs: dict, pruner: str | None) -> str | None:
    """Why a stored study (its user attributes) cannot resume under ``pruner``: its rungs ranked trials by
    other costs, and its trials would then be ranked by both. None where it can."""
    rule = stored_rule(attrs)
    if not rule or pruner not in COST_PRUNERS or rule[1] == COST_PRUNERS[pruner][1]:
        return None
    same = ", ".join(n for n, r in COST_PRUNERS.items() if r[1] == rule[1])
    return (f"ranked its trials at rungs by {rule[1]} costs (its --pruner {attrs.get('pruner')} then); --pruner "
            f"{pruner} ranks by {COST_PRUNERS[pruner][1]}: resume it with one that ranks by {rule[1]} costs ({same})")


def cost_rule(pruner: str, epochs: int, costs: tuple[str, ...]) -> ParetoHalving | None:
    """The ParetoHalving rule of a pruner by cost (None for any other pruner)."""
    if pruner not in COST_PRUNERS:
        return None
    beaten, ranked_by = COST_PRUNERS[pruner]
    return ParetoHalving(epochs, costs, beaten=beaten, ranked_by=ranked_by)


def pareto_first_rung(epochs: int) -> int:
    return max(1, min(epochs, round(PARETO_FIRST_RUNG_SHARE * epochs)))


def epoch_share(epochs: int, pruner: str = "hyperband") -> float:
    """The share of the target's epochs a trial runs on average under ``pruner``, from its rungs
    (``halving_share``): Hyperband averages its brackets, weighted as Optuna allocates trials to
    them; the median pruner and no pruner count whole runs (the most a trial can cost), as does a cost rule
    that keeps each rung's front (``beaten``): how many it stops depends on the draws (53-75% of the target's
    epochs spent in the measured pairs, results/bench/pareto_pruning*.json)."""
    if pruner in COST_PRUNERS:
        return halving_share(epochs, pareto_first_rung(epochs)) if COST_PRUNERS[pruner][0] is None else 1.0
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


CURVE_ATTR = "val_acc_curve"  # {epoch: val_acc}: a multi-objective trial's curve (Trial.report raises there)
# The costs a trial's rungs rank it by: at TTA level 0 (its curve is of plain accuracy, and a trial whose TTA
# level makes it dearer trains the same weights as the plain one), or, under a rule ranked_by "own", its own
# costs (trials before the attribute: their "costs").
RUNG_COSTS_ATTR = "rung_costs"


@dataclass(frozen=True)
class ParetoHalving:
    """Successive halving for a study of accuracy against cost, where a trial competes only with trials
    that cost no more. A trial's costs are known before it trains (study/objectives.py), so at each rung
    (the first rung, then x ``reduction``) its val_acc is ranked among the trials that reached the rung
    and cost no more in every cost objective; it goes on if it is in their top 1/``reduction`` (or
    fewer than ``reduction`` compete), or, with ``beaten``, unless that many of them were more accurate
    there. Costs are the trial's at TTA level 0 or its own (``ranked_by``). So a cheap trial is never
    stopped by an expensive, more accurate one: the front's cheap end survives (Syne Tune's MOASHA ranks
    by non-dominated sorting instead; here the cost side of the front is known in advance)."""

    max_epochs: int
    costs: tuple[str, ...]
    reduction: int = REDUCTION_FACTOR
    # ``--pruner pareto``, ``pareto-front``: a trial goes on unless this many trials that cost no more were more
    # accurate at the rung (1: only the rung's own front goes on); None: the top 1/reduction of them.
    beaten: int | None = None
    # the costs a trial is ranked by at a rung (its RUNG_COSTS_ATTR): "plain", at TTA level 0 (the curve is of
    # plain accuracy), or "own", at the TTA level it predicts with (``--pruner pareto``)
    ranked_by: str = "plain"

    def rungs(self) -> list[int]:
        return rungs_below(self.max_epochs, pareto_first_rung(self.max_epochs), self.reduction)

    def keeps(self, val_acc: float, costs: dict[str, float], peers: list[tuple[float, dict[str, float]]]) -> bool:
        """Whether a trial of ``val_acc`` and ``costs`` at a rung goes on, against ``peers`` (val_acc, costs) there."""
        rivals = [v for v, c in peers if all(c[k] <= costs[k] for k in self.costs)]
        if self.beaten is not None:
            return sum(v > val_acc for v in rivals) < self.beaten
        n = len(rivals) + 1
        return n < self.reduction or 1 + sum(v > val_acc for v in rivals) <= n // self.reduction

    def peers(self, study: optuna.Study, epoch: int, number: int) -> list[tuple[float, dict[str, float]]]:
        """(val_acc at ``epoch``, costs) of every other trial that reached that epoch (not a failed one: its
        retry, which inherited its curve, counts instead)."""
        out = []
        for t in study.get_trials(deepcopy=False):
            curve = t.user_attrs.get(CURVE_ATTR, {})
            costs = t.user_attrs.get(RUNG_COSTS_ATTR, t.user_attrs.get("costs"))
            if t.number != number and costs and str(epoch) in curve and t.state != optuna.trial.TrialState.FAIL:
                out.append((curve[str(epoch)], costs))
        return out


class PruningCallback:
    """Reports val_acc to the trial after every epoch and prunes when the pruner says so.

    After the trial's last epoch it only reports: pruning then saves nothing (the
    budget is spent), and a trial that ran its course counts as complete, with its
    value, rather than as pruned. Hyperband's top rung is the last epoch, so
    without this it "prunes" finished trials (7 of 30 in a study here). In a study of several
    objectives it reports nothing (``reports=False``): Optuna's ``Trial.report`` raises there."""

    def __init__(self, trial: optuna.Trial, last_epoch: int | None = None, reports: bool = True,
                 pareto: ParetoHalving | None = None, costs: dict[str, float] | None = None):
        self.trial, self.last_epoch, self.reports = trial, last_epoch, reports
        self.pareto, self.costs, self.curve = pareto, costs or {}, dict(trial.user_attrs.get(CURVE_ATTR, {}))
        self.seconds = 0.0  # spent in Optuna (storage writes, pruner), for the overhead benchmark
        # Epochs a retried trial inherited from the trial it takes over (reported and judged there):
        # it may train them again from an earlier checkpoint, and reports them no second time.
        self.inherited: set[int] = set()

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if epoch in self.inherited:
            return
        if not self.reports:
            return self._judge_by_cost(epoch, metrics["val_acc"])
        start = time.perf_counter()
        try:
            self.trial.report(metrics["val_acc"], epoch)
            prune = epoch != self.last_epoch and self.trial.should_prune()
        finally:
            self.seconds += time.perf_counter() - start
        if prune:
            raise optuna.TrialPruned(f"pruned after epoch {epoch} at val_acc {metrics['val_acc']:.4f}")

    def _judge_by_cost(self, epoch: int, val_acc: float) -> None:
        """A trial of several objectives: its curve as a user attribute, and ParetoHalving at a rung."""
        start = time.perf_counter()
        self.curve[str(epoch)] = val_acc
        self.trial.set_user_attr(CURVE_ATTR, self.curve)
        prune = (self.pareto is not None and epoch != self.last_epoch and epoch in self.pareto.rungs()
                 and not self.pareto.keeps(val_acc, self.costs, self.pareto.peers(self.trial.study, epoch,
                                                                                   self.trial.number)))
        self.seconds += time.perf_counter() - start
        if prune:
            rule = (f"{self.pareto.beaten} or more trials that cost no more were more accurate" if self.pareto.beaten
                    else f"not in the top 1/{self.pareto.reduction} of the trials that cost no more")
            raise optuna.TrialPruned(f"pruned after epoch {epoch} at val_acc {val_acc:.4f}: {rule}")
