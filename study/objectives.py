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
trial to its target, or, with ``--pruner pareto``, stops a trial at a rung where a trial that costs no
more was more accurate (``study.pruning.ParetoHalving``; the other rules: ``study.pruning.COST_PRUNERS``).

Usage:
    names = parse_objectives("val_acc,latency")          # ("val_acc", "latency")
    limit = parse_constraint("latency<=4")                # Constraint("latency", 4.0)
    costs = measure_costs(cfg, names)                     # {"latency": 3.1, ...} and the detail
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from cifar.config import TrainConfig
from cifar.model import model_cost
from cifar.registry import Registry
from cifar.tta import tta_passes
from study.pruning import COST_PRUNERS

COSTS_ATTR = "costs"  # the user attribute holding a trial's measured costs (and the latency's detail)
VARIANTS_ATTR = "variants"  # a complete trial's model at every TTA level: val_acc and costs (``tta_variants``)


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
                     distributed: bool = False, space: str = "default") -> tuple[tuple[str, ...], Constraint | None]:
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
    if len(names) > 1 and pruner not in (None, "none", *COST_PRUNERS):
        raise ValueError("Optuna's pruners cannot prune a study of several objectives (Trial.report raises "
                         "there): use --pruner pareto (by cost) or none, the default for such a study")
    if len(names) == 1 and pruner in COST_PRUNERS:
        raise ValueError("--pruner pareto ranks trials among those that cost no more: it needs cost --objectives")
    if len(names) == 1 and space == "cost":
        raise ValueError("--space cost searches the TTA level, which only a study with cost --objectives scores "
                         "(e.g. --objectives val_acc,latency)")
    if len(names) > 1 and distributed:
        raise ValueError("a study of several objectives does not run under torchrun; run it with --workers")
    return names, limit


def measure_costs(cfg: TrainConfig, names: tuple[str, ...] = ("latency", "flops", "params"), tta: int = 0,
                  cache_dir: Path | None = None) -> dict[str, Any]:
    """Every cost of ``cfg``'s model predicting at TTA level ``tta`` (FLOPs per image counting every pass;
    the latency only where asked, it takes seconds: once per architecture where ``cache_dir`` is given)."""
    params, flops = model_cost(cfg.model)
    costs: dict[str, Any] = {"flops": flops * tta_passes(tta), "params": params, "tta": tta}
    if "latency" in names:
        from cifar.latency import cached_cost, inference_cost

        detail = cached_cost(cfg, tta, cache_dir) if cache_dir else inference_cost(cfg, tta)
        costs.update(latency=detail["batch_1"]["median_ms"], latency_detail=detail)
    return costs


def p90_ms(costs: dict[str, Any]) -> float | None:
    """The p90 of one image's latency in a trial's costs (None where the latency was not measured)."""
    return costs.get("latency_detail", {}).get("batch_1", {}).get("p90_ms")


def latency_cache(runs_root: Path) -> Path:
    """Where a study's trials keep their architectures' latency: beside the studies' run directories."""
    return Path(runs_root).parent / "latency"


def tta_variants(run_dir: Path, data: Any, cfg: TrainConfig, names: tuple[str, ...], scored: dict[int, float],
                 cache_dir: Path | None) -> list[dict[str, Any]]:
    """A trained model predicting at every TTA level: validation accuracy (``scored``: the levels known
    already) and the costs at that level. Test-time augmentation needs no training, so one trained
    model is several deployable ones; the Pareto report's front is over them (reports.pareto.points_of)."""
    from cifar.evaluate import val_accuracy
    from cifar.tta import TTA_LEVELS

    out = []
    for level in TTA_LEVELS:
        acc = scored[level] if level in scored else val_accuracy(run_dir, data, level, cfg.device)
        costs = measure_costs(cfg, names, level, cache_dir)
        out.append({"tta": level, "val_acc": acc, **{n: costs[n] for n in ("flops", "params", "latency") if n in costs},
                    "latency_p90_ms": p90_ms(costs)})
    return out


def variants_of(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> list[dict[str, Any]] | None:
    """A complete trial's TTA variants: recorded by the trial, else added to the study after it (``add_variants``)."""
    return trial.user_attrs.get(VARIANTS_ATTR) or study.user_attrs.get(f"{VARIANTS_ATTR}:{trial.number}")


def add_variants(study: optuna.Study, base: TrainConfig, load_data: Callable[[], Any]) -> int:
    """The TTA variants of the complete cost-space trials that ran before trials recorded them (a finished
    trial cannot take a user attribute: the study holds them, one key per trial); validation only, the
    latency from the study's cache (<runs-dir>/latency). Trials whose best.pt is not here are left as they
    are. ``load_data``: the data, loaded where needed. Returns how many trials got variants."""
    from cifar.rundir import RunDir
    from study.search_space import trial_config

    names, added, data = tuple(study.user_attrs.get("objectives", ("val_acc",))), 0, None
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        run_dir = Path(t.user_attrs.get("run_dir", "-"))
        if "tta" not in t.params or variants_of(study, t) or not RunDir(run_dir).best.is_file():
            continue
        data = data or load_data()
        own = {0: t.user_attrs.get("val_acc_plain", t.values[0]), int(t.params["tta"]): t.values[0]}
        cfg = trial_config(t, base, study.user_attrs.get("space", "cost"))
        study.set_user_attr(f"{VARIANTS_ATTR}:{t.number}",
                            tta_variants(run_dir, data, cfg, names, own, latency_cache(run_dir.parent)))
        added += 1
    return added


def values(val_acc: float, costs: dict[str, Any], names: tuple[str, ...]) -> tuple[float, ...]:
    """The trial's objective values, in the study's order."""
    return (val_acc, *(float(costs[n]) for n in names[1:]))


def best_of(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The complete trial of the highest val_acc, in a study of one objective or several (None: none yet)."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return max(complete, key=lambda t: (t.values[0], -t.number), default=None)
