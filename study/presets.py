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

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cifar.config import TrainConfig, apply_overrides
from cifar.registry import Registry
from study import budget as budget_lib
from study.pruning import default_pruner
from study.sequential import Design, mde


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
    # The report's verdict (reports.race, reports.verdict): the candidates that race the baseline, the
    # race's most rounds, and the test comparison's looks (pairs of seeds). Where sized, the looks are
    # (6, 8, ...) up to the fewest pairs whose minimum detectable effect at 80% power reaches
    # target_mde (accuracy) at the noise measured for the target, max_pairs at most, as time allows.
    candidates: int = 3
    race_rounds: int = 3
    looks: tuple[int, ...] = (6, 8, 10)
    target_mde: float | None = None
    max_pairs: int = 12


PRESETS: Registry[Preset] = Registry("preset", {
    "smoke": Preset(n_trials=6, target_epochs=2, timeout=None, candidates=2, race_rounds=2, looks=(3, 4)),
    # 3 epochs of the fast recipe: 81.2% test accuracy (82.3% with TTA; 4: 83.8%), a run of 4-7 minutes on
    # 2 cores, so that the study, the race and a comparison that can decide fit 170 minutes together (a
    # 180-minute session, its setup included).
    # The comparison is sized to a 0.5-point MDE, below the 0.6 points it must detect with 80% power:
    # the race sometimes picks a weaker candidate, and 8 seeds leave the noise itself uncertain
    # (bench/verdict_calibration.py measures the power that results).
    "cpu": Preset(n_trials=30, target_epochs=3, timeout=None, minutes=170, max_target_epochs=4, good_trials=16,
                  candidates=2, race_rounds=2, target_mde=0.005, max_pairs=12),
    # Four trials at once per GPU: one small model's trial leaves most of a large GPU idle. 12 pairs at
    # 10 epochs (one run's test noise 0.19 points) detect 0.25 points; the report's 36 runs take about
    # 5 minutes on an H200.
    "gpu": Preset(n_trials=100, target_epochs=10, timeout=None, workers=4, looks=(6, 8, 10, 12), target_mde=0.003),
})

REPORT_CANDIDATES = 3   # the study's top distinct configs that race the baseline (reports.race)
RACE_ROUNDS = 3         # the race's most rounds, one fresh seed each (2 at least: a spread to plan from)
RACE_ALPHA = 0.05       # one-sided paired t level at which the race's leader knocks a candidate out
LOOKS = (6, 8, 10)      # pairs of seeds at each look of the test comparison (6: the fewest at which
                        # the exact sign-flip test can reach p < 0.05)
FIRST_LOOK = 6
NOISE_FILE = Path(__file__).resolve().parents[1] / "results" / "bench" / "time_to_accuracy.json"
DEFAULT_RUN_STD = 0.004  # one run's validation noise where none is measured for the target (0.12-0.42
                         # points at 5 epochs in the committed reports' validation, more at fewer epochs)


def noise_runs(epochs: int, source: Path = NOISE_FILE) -> list[dict]:
    """The committed records of the fast recipe at ``epochs`` (bench/time_to_accuracy.py), each run
    with no override but its epochs: the seeds one run's noise is measured over."""
    if not source.is_file():
        return []
    return [r for r in json.loads(source.read_text())["runs"]
            if r["name"] == f"fast-{epochs}ep" and not r["overrides"].keys() - {"epochs"}]


def measured_run_std(epochs: int, source: Path = NOISE_FILE) -> tuple[float, str]:
    """One run's accuracy standard deviation of the fast recipe at ``epochs`` over the committed seeds
    (bench/time_to_accuracy.py), the larger of validation's and test's, and where it comes from; the
    default where fewer than 3 seeds. The comparison reads test accuracy while the report can only plan
    from validation (its race): at 3 epochs over 8 seeds test varied more (0.29 points against 0.24),
    so the size takes the larger."""
    runs = noise_runs(epochs, source)
    if len(runs) < 3:
        return DEFAULT_RUN_STD, (f"the default {100 * DEFAULT_RUN_STD:.2f} points (no 3 seeds at {epochs} epochs "
                                 "measured)")
    val, test = (statistics.stdev(r[k] for r in runs) for k in ("best_val_acc", "test_acc"))
    which = "validation" if val >= test else "test"
    return max(val, test), f"{len(runs)} seeds of the fast recipe at {epochs} epochs, {which} ({NOISE_FILE.name})"


def design_mde(looks: tuple[int, ...], run_std: float) -> float:
    """The minimum detectable effect at 80% power of a comparison with these looks, one run's noise
    ``run_std`` on each arm (independent: the difference's std is run_std x sqrt(2))."""
    design = Design(looks)
    return mde(run_std * math.sqrt(2), looks[-1], design.nominal_alphas()[-1])


def pick_preset(name: str) -> str:
    """``auto``: gpu where CUDA is available, else cpu; any other name must be a preset."""
    if name == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    PRESETS.check(name)
    return name


def target_budget(preset: Preset, base: TrainConfig, stored: dict[str, Any] | None,
                  target_epochs: int | None, pruner: str | None) -> tuple[TrainConfig, dict[str, Any]]:
    """The base config at the study's target, and the budget to store with the study.

    A resumed study (``stored``: its budget attribute) keeps its target; a new one takes
    ``target_epochs`` (given by hand) or the preset's, and is sized to the machine where the
    preset says so (the number of trials, and the target unless given by hand), a trial costing
    what ``pruner`` leaves of a target run (None: the default pruner at each target considered).
    """
    if stored is not None:
        return apply_overrides(base, {"epochs": stored["target_epochs"]}), stored
    base = apply_overrides(base, {"epochs": target_epochs or preset.target_epochs})
    budget: dict[str, Any] = {"verdict": {"candidates": preset.candidates, "race_rounds": preset.race_rounds,
                                          "looks": list(preset.looks)}}
    if preset.minutes:
        base, budget = fit_budget(preset, base, sized_target=target_epochs is None, pruner=pruner)
    return base, {"target_epochs": base.epochs, **budget}


def fit_budget(preset: Preset, base: TrainConfig, sized_target: bool,
               pruner: str | None = None) -> tuple[TrainConfig, dict[str, Any]]:
    """Measure this machine and size the main job to the preset's minutes (``plan_job``)."""
    print("measuring this machine's training speed to size the study...", flush=True)
    tp = budget_lib.measure_throughput(base)
    base, budget = plan_job(preset, base, tp, sized_target, pruner)
    v = budget["verdict"]
    print(f"{tp.train:.0f} train / {tp.eval:.0f} eval images/s on {tp.device}: a target run of {base.epochs} "
          f"epochs takes about {budget['run_minutes']:.1f} min; {budget['n_trials']} trials, about "
          f"{budget['study_minutes']:.0f} min, then the report's {budget['report_runs']} runs at most (a race of "
          f"{preset.candidates} candidates and the baseline over {preset.race_rounds} seeds, then up to "
          f"{v['looks'][-1]} seeds each for the test comparison), about {budget['report_minutes']:.0f} min (the "
          f"job's target: {preset.minutes:.0f} min). The comparison can detect {100 * v['planned_mde']:.2f} points "
          f"with 80% power (one run's noise {100 * v['run_std']:.2f} points: {v['run_std_source']})", flush=True)
    return base, budget


def plan_job(preset: Preset, base: TrainConfig, tp: budget_lib.Throughput, sized_target: bool = True,
             pruner: str | None = None) -> tuple[TrainConfig, dict[str, Any]]:
    """Size the main job to the preset's minutes at throughput ``tp``: the comparison's looks (the
    fewest pairs whose MDE reaches the preset's target MDE at the noise measured for the target, as
    far as time allows while the study keeps its fewest trials), the number of trials, and
    (``sized_target``) the longest target, up to the preset's most, at which at least
    ``good_trials`` trials still fit."""
    def size(epochs: int, looks: tuple[int, ...]) -> budget_lib.StudySize:
        return budget_lib.size_study(tp, apply_overrides(base, {"epochs": epochs}), preset.minutes,
                                     preset.min_trials, preset.n_trials, preset.candidates, preset.race_rounds,
                                     looks[-1], pruner or default_pruner(epochs))

    def sized(epochs: int) -> tuple[tuple[int, ...], float, str]:
        run_std, source = measured_run_std(epochs)
        looks = (FIRST_LOOK,)
        for last in range(FIRST_LOOK, preset.max_pairs + 1, 2):
            candidate = tuple(range(FIRST_LOOK, last + 1, 2))
            if last > FIRST_LOOK and size(epochs, candidate).fit < preset.min_trials:
                break
            looks = candidate
            if design_mde(looks, run_std) <= (preset.target_mde or 0):
                break
        return looks, run_std, source

    epochs = base.epochs
    while sized_target and epochs < (preset.max_target_epochs or 0) \
            and size(epochs + 1, sized(epochs + 1)[0]).n_trials >= preset.good_trials:
        epochs += 1
    looks, run_std, source = sized(epochs)
    base, fit = apply_overrides(base, {"epochs": epochs}), size(epochs, looks)
    return base, {"n_trials": fit.n_trials, "throughput": budget_lib.to_attr(tp), "target_minutes": preset.minutes,
                  "estimate_minutes": round(fit.study_minutes + fit.report_minutes, 1),
                  "run_minutes": round(fit.run_minutes, 2), "study_minutes": round(fit.study_minutes, 1),
                  "report_minutes": round(fit.report_minutes, 1), "report_runs": fit.report_runs,
                  "verdict": {"candidates": preset.candidates, "race_rounds": preset.race_rounds, "looks": list(looks),
                              "run_std": run_std, "run_std_source": source,
                              "planned_mde": design_mde(looks, run_std)}}
