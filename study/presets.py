"""Presets (smoke, cpu, gpu) and a study's target budget: fixed when created, kept on resume.

A study tunes for the budget the model will be trained at: its **target** (epochs
of a complete run on the whole train split, with the recipe's schedule). Every
trial is a target run that the pruner may stop at an earlier epoch, so the
study's completed trials are measured at the target, and the report retrains its
candidates at the same target. A preset fixes the target and the number of
trials; the CPU preset sizes the number of trials to the machine (measured when
the study is created, ``study.budget``) so that the main job, the study and its
report, fits the preset's minutes. The measurement and the budget are stored in
the study's ``budget`` user attribute, so a resumed study and its report keep them.

Usage:
    preset = PRESETS.get(pick_preset("auto"))
    base, budget = target_budget(preset, base, stored=None, target_epochs=None, pruner="hyperband")
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
    n_trials: int           # trials of a default study (where sized: the most)
    target_epochs: int      # epochs of the target run: a complete trial, and each run of the report
    timeout: float | None   # seconds; a safety stop for the study
    # Sized to the machine (study/budget.py): the main job's minutes (study and report), the
    # fewest trials worth a study, and a longer target where enough trials still fit (up to
    # max_target_epochs, while at least good_trials do).
    minutes: float | None = None
    min_trials: int = 4     # the baseline and the report's 3 candidates
    max_target_epochs: int | None = None
    good_trials: int = 20
    workers: int = 1        # worker processes of a default study (on a GPU: several share each device)


PRESETS: Registry[Preset] = Registry("preset", {
    "smoke": Preset(n_trials=6, target_epochs=2, timeout=None),
    # 4 epochs of the fast recipe: 84.6% test accuracy with TTA; 6: 87.4% (results/bench/time_to_accuracy.json).
    "cpu": Preset(n_trials=30, target_epochs=4, timeout=None, minutes=170, max_target_epochs=6),
    # Four trials at once per GPU: one small model's trial leaves most of a large GPU idle.
    "gpu": Preset(n_trials=100, target_epochs=10, timeout=None, workers=4),
})

REPORT_SEEDS = 3        # seeds of every config the report retrains (the same seeds for each)
REPORT_CANDIDATES = 3   # the study's top distinct configs the report retrains to pick the winner


def pick_preset(name: str) -> str:
    """``auto``: gpu where CUDA is available, else cpu; any other name must be a preset."""
    if name == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    PRESETS.check(name)
    return name


def target_budget(preset: Preset, base: TrainConfig, stored: dict[str, Any] | None,
                  target_epochs: int | None, pruner: str) -> tuple[TrainConfig, dict[str, Any]]:
    """The base config at the study's target, and the budget to store with the study.

    A resumed study (``stored``: its budget attribute) keeps its target; a new one takes
    ``target_epochs`` (given by hand) or the preset's, and is sized to the machine where the
    preset says so (the number of trials, and the target unless given by hand), a trial costing
    what ``pruner`` leaves of a target run.
    """
    if stored is not None:
        return apply_overrides(base, {"epochs": stored["target_epochs"]}), stored
    base = apply_overrides(base, {"epochs": target_epochs or preset.target_epochs})
    budget: dict[str, Any] = {}
    if preset.minutes:
        base, budget = fit_budget(preset, base, sized_target=target_epochs is None, pruner=pruner)
    return base, {"target_epochs": base.epochs, **budget}


def fit_budget(preset: Preset, base: TrainConfig, sized_target: bool,
               pruner: str = "hyperband") -> tuple[TrainConfig, dict[str, Any]]:
    """Measure this machine and size the study so that the main job fits the preset's minutes:
    the number of trials, and (``sized_target``) the longest target, up to the preset's most,
    at which at least ``good_trials`` trials still fit."""
    print("measuring this machine's training speed to size the study...", flush=True)
    tp = budget_lib.measure_throughput(base)

    def size(epochs: int) -> budget_lib.StudySize:
        return budget_lib.size_study(tp, apply_overrides(base, {"epochs": epochs}), preset.minutes,
                                     preset.min_trials, preset.n_trials, REPORT_CANDIDATES, REPORT_SEEDS, pruner)

    epochs = base.epochs
    while sized_target and epochs < (preset.max_target_epochs or 0) and size(epochs + 1).n_trials >= preset.good_trials:
        epochs += 1
    base, fit = apply_overrides(base, {"epochs": epochs}), size(epochs)
    print(f"{tp.train:.0f} train / {tp.eval:.0f} eval images/s on {tp.device}: a target run of {epochs} "
          f"epochs takes about {fit.run_minutes:.1f} min; {fit.n_trials} trials, about "
          f"{fit.study_minutes:.0f} min, then the report's {fit.report_runs} runs, about "
          f"{fit.report_minutes:.0f} min (the job's target: {preset.minutes:.0f} min)", flush=True)
    return base, {"n_trials": fit.n_trials, "throughput": budget_lib.to_attr(tp), "target_minutes": preset.minutes,
                  "estimate_minutes": round(fit.study_minutes + fit.report_minutes, 1),
                  "run_minutes": round(fit.run_minutes, 2)}
