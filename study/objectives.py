"""What a study optimises: validation accuracy alone, or with what the model costs at inference.

``--objectives val_acc,latency`` (also ``flops``, ``params``) makes a multi-objective study: each
trial returns its best validation accuracy (maximised) and its costs (minimised), measured before
training starts, since they depend on the architecture, not the weights: ``latency`` is the median
milliseconds of one image through the trial's ONNX graph with ONNX Runtime on the machine the
study runs on (``cifar.latency``; batch 1, with the throughput batch and the spread stored beside
it), ``flops`` the forward FLOPs per image, ``params`` the parameter count. ``--constraint
latency<=X`` (or ``flops<=X``, ``params<=X``) tells the sampler which trials are feasible (``Trial.set_constraint``,
which Optuna's TPE and GP samplers read); infeasible trials still run and are stored.

Optuna cannot prune a multi-objective trial (``Trial.report`` raises there): such a study runs every
trial to its target, or, with ``--pruner pareto``, stops a trial at a rung where it is not among the
best third of the trials that cost no more (``study.pruning.ParetoHalving``).

Usage:
    names = parse_objectives("val_acc,latency")          # ("val_acc", "latency")
    limit = parse_constraint("latency<=4")                # Constraint("latency", 4.0)
    costs = measure_costs(cfg, names)                     # {"latency": 3.1, ...} and the detail
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna

from cifar.config import TrainConfig
from cifar.model import model_cost
from cifar.registry import Registry

COSTS_ATTR = "costs"  # the user attribute holding a trial's measured costs (and the latency's detail)


@dataclass(frozen=True)
class Criterion:
    direction: str   # "maximize" or "minimize"
    unit: str        # as a table header shows it
    what: str


OBJECTIVES: Registry[Criterion] = Registry("objective", {
    "val_acc": Criterion("maximize", "val_acc", "best validation accuracy at the target"),
    "latency": Criterion("minimize", "ms", "one image through the ONNX graph, median (ONNX Runtime, this machine)"),
    "flops": Criterion("minimize", "FLOPs", "forward FLOPs per image"),
    "params": Criterion("minimize", "params", "trainable parameters"),
})


@dataclass(frozen=True)
class Constraint:
    name: str      # a cost objective
    limit: float   # feasible where cost <= limit

    def violation(self, costs: dict[str, float]) -> float:
        """Optuna's convention: <= 0 is feasible."""
        return costs[self.name] - self.limit


def parse_objectives(text: str) -> tuple[str, ...]:
    """``val_acc`` first, then any costs, each once. Raises ValueError naming what is wrong."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for n in names:
        OBJECTIVES.check(n)
    if not names or names[0] != "val_acc":
        raise ValueError(f"--objectives must start with val_acc (then any of latency, flops, params), got {text!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"--objectives names an objective twice: {text!r}")
    return names


def parse_constraint(text: str) -> Constraint:
    """``NAME<=LIMIT`` for a cost (latency in ms). Raises ValueError naming what is wrong."""
    name, sep, limit = text.partition("<=")
    name = name.strip().removesuffix("_ms")
    try:
        value = float(limit)
    except ValueError:
        value = math.nan
    if not sep or name not in ("latency", "flops", "params") or not math.isfinite(value) or value <= 0:
        raise ValueError(f"--constraint must read NAME<=LIMIT with NAME latency (ms), flops or params and a "
                         f"positive LIMIT, got {text!r}")
    return Constraint(name, value)


def directions(names: tuple[str, ...]) -> list[str]:
    return [OBJECTIVES.get(n).direction for n in names]


def study_objectives(objectives: str | None, constraint: str | None, existing: Any, pruner: str | None,
                     distributed: bool = False) -> tuple[tuple[str, ...], Constraint | None]:
    """The objectives and the constraint of a new study, or of ``existing`` (its StudySummary) resumed:
    given, else its own, else val_acc alone. Raises ValueError naming what does not fit."""
    attrs = existing.user_attrs if existing else {}
    own = tuple(attrs.get("objectives", ["val_acc"]))
    names = parse_objectives(objectives) if objectives else own
    if existing and ([d.name.lower() for d in existing.directions] != directions(names)
                     or ("objectives" in attrs and names != own)):
        found = " and ".join(f"{d.name.lower()}s" for d in existing.directions)
        raise ValueError(f"study {existing.study_name!r} {found} ({', '.join(own)}); this one optimises "
                         f"{', '.join(names)}: choose another --study-name")
    if existing and constraint and constraint != attrs.get("constraint"):
        raise ValueError(f"study {existing.study_name!r} was made with constraint {attrs.get('constraint')}; "
                         "its sampler judged its trials so: a new --constraint needs a new --study-name")
    text = constraint or attrs.get("constraint")
    limit = parse_constraint(text) if text else None
    if limit and limit.name not in names:
        raise ValueError(f"--constraint on {limit.name} needs it among --objectives (e.g. val_acc,{limit.name})")
    if len(names) > 1 and pruner not in (None, "none", "pareto"):
        raise ValueError("Optuna's pruners cannot prune a study of several objectives (Trial.report raises "
                         "there): use --pruner pareto (by cost) or none, the default for such a study")
    if len(names) == 1 and pruner == "pareto":
        raise ValueError("--pruner pareto ranks trials among those that cost no more: it needs cost --objectives")
    if len(names) > 1 and distributed:
        raise ValueError("a study of several objectives does not run under torchrun; run it with --workers")
    return names, limit


def measure_costs(cfg: TrainConfig, names: tuple[str, ...] = ("latency", "flops", "params")) -> dict[str, Any]:
    """Every cost of ``cfg``'s model (the latency only where asked: it takes seconds), and the latency's detail."""
    params, flops = model_cost(cfg.model)
    costs: dict[str, Any] = {"flops": flops, "params": params}
    if "latency" in names:
        from cifar.latency import inference_cost

        detail = inference_cost(cfg)
        costs.update(latency=detail["batch_1"]["median_ms"], latency_detail=detail)
    return costs


def values(val_acc: float, costs: dict[str, Any], names: tuple[str, ...]) -> tuple[float, ...]:
    """The trial's objective values, in the study's order."""
    return (val_acc, *(float(costs[n]) for n in names[1:]))


def best_of(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The complete trial of the highest val_acc, in a study of one objective or several (None: none yet)."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return max(complete, key=lambda t: (t.values[0], -t.number), default=None)
