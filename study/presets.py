"""Presets (smoke, cpu, gpu) and the trial budget of a study: sized when created, kept on resume.

A preset fixes a default study's size: trials, the most epochs a trial runs,
its share of the train split, a safety timeout. The CPU preset sizes the
budget to the machine when the study is created (``study.budget``); the
measurement and the budget are stored in the study's ``budget`` user attribute,
so a resumed study trains at the budget it was created with.

Usage:
    preset = PRESETS.get(pick_preset("auto"))
    base, budget = trial_budget(preset, base, stored=None, set_by_hand=set())
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from cifar.config import TrainConfig, apply_overrides
from cifar.registry import Registry
from study import budget as budget_lib


@dataclass(frozen=True)
class Preset:
    n_trials: int           # trials of a default study
    max_epochs: int         # epochs of a trial that is never pruned
    train_fraction: float   # share of the train split each trial trains on
    timeout: float | None   # seconds; a safety stop for the whole study
    # Sized to the machine (study/budget.py): the study's target minutes, and the
    # smallest train share before a trial drops an epoch rung instead.
    minutes: float | None = None
    min_fraction: float = 0.05


PRESETS: Registry[Preset] = Registry("preset", {
    "smoke": Preset(n_trials=6, max_epochs=2, train_fraction=0.05, timeout=None),
    "cpu": Preset(n_trials=30, max_epochs=9, train_fraction=0.15, timeout=3600, minutes=45),
    "gpu": Preset(n_trials=100, max_epochs=15, train_fraction=1.0, timeout=None),
})

# Epochs of the report's retraining (whole train split), by the study's preset: the most a report trains.
REPORT_EPOCHS = {"smoke": 2, "cpu": 10, "gpu": 30}
# A study sized to its machine (study/budget.py) sizes its report too: all runs
# of a CPU-preset report (both configs, every seed) fit in about this many minutes.
REPORT_MINUTES = {"cpu": 85}
REPORT_SEEDS = 3

# --set keys that make up a trial's budget, and their names in the study's "budget" attribute
BUDGET_FIELDS = {"epochs": "max_epochs", "train_fraction": "train_fraction", "warmup_epochs": "warmup_epochs"}


def pick_preset(name: str) -> str:
    """``auto``: gpu where CUDA is available, else cpu; any other name must be a preset."""
    if name == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    PRESETS.check(name)
    return name


def trial_budget(preset: Preset, base: TrainConfig, stored: dict[str, Any] | None,
                 set_by_hand: set[str]) -> tuple[TrainConfig, dict[str, Any]]:
    """The base config at the study's trial budget, and the budget to store with the study.

    A resumed study (``stored``: its budget attribute) keeps its budget, except the
    fields given by hand; a new one is sized to the machine when its preset says so
    and no budget field was given by hand.
    """
    if stored is not None:
        keep = {k: stored[a] for k, a in BUDGET_FIELDS.items() if a in stored and k not in set_by_hand}
        return apply_overrides(base, keep), stored
    budget = fit_budget(preset, base) if preset.minutes and not set_by_hand else {}
    base = apply_overrides(base, {k: budget[a] for k, a in BUDGET_FIELDS.items() if a in budget})
    budget |= {"max_epochs": base.epochs, "train_fraction": base.data.train_fraction,
               "warmup_epochs": base.warmup_epochs}
    return base, budget


def fit_budget(preset: Preset, base: TrainConfig) -> dict[str, Any]:
    """Measure this machine and size the trials so that the preset's study fits its minutes.

    The size is the preset's, whatever --n-trials says: a trial costs the same in a
    short study as in a long one, so their trials compare."""
    n_trials = preset.n_trials
    print("measuring this machine's training speed to size the trials...", flush=True)
    tp = budget_lib.measure_throughput(base)
    fit = budget_lib.size_trials(tp, base, n_trials, preset.minutes, preset.min_fraction)
    print(f"{tp.train:.0f} train / {tp.eval:.0f} eval images/s on {tp.device}: {fit.epochs} epochs max on "
          f"{fit.train_fraction:.1%} of the train split, about {fit.minutes:.0f} min for {n_trials} trials "
          f"(target {preset.minutes:.0f})", flush=True)
    return {"max_epochs": fit.epochs, "train_fraction": fit.train_fraction, "warmup_epochs": fit.warmup_epochs,
            "throughput": budget_lib.to_attr(tp), "target_minutes": preset.minutes,
            "estimate_minutes": round(fit.minutes, 1)}


def at_report_budget(cfg: TrainConfig, attrs: dict[str, Any], epochs: int | None = None,
                     seeds: int = REPORT_SEEDS) -> TrainConfig:
    """``cfg`` at the budget the report retrains at: the whole train split, the preset's epochs
    (sized to the measured machine where the study was), the trial's warm-up share kept.

    ``attrs``: the study's user attributes (preset, budget).
    """
    preset = attrs.get("preset", "cpu")
    budget = attrs.get("budget") or {}
    throughput = budget_lib.from_attr(budget.get("throughput"))
    overrides: dict[str, float] = {"train_fraction": 1.0}
    if epochs is None:
        epochs = REPORT_EPOCHS.get(preset, 10)
        if throughput and preset in REPORT_MINUTES:
            epochs = budget_lib.report_epochs(throughput, cfg, 2 * seeds, REPORT_MINUTES[preset], epochs)
    if throughput:  # a sized study scaled the warm-up with its epochs; the report keeps that share
        overrides["warmup_epochs"] = round(epochs * budget["warmup_epochs"] / budget["max_epochs"], 3)
    return apply_overrides(cfg, {**overrides, "epochs": epochs})
