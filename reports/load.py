"""Load: a study and the run directories of a report, as DataFrames and configs.

Nothing here writes. The baseline is the study's enqueued trial (user attribute
``baseline``); the tuned configuration is its best complete trial. Both are
rebuilt from the study's recorded base config and the trial's parameters.

Usage:
    study = open_study("sqlite:///results/study.db", "cifar-cpu")
    baseline, tuned = configs_of(study)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from cifar.config import TrainConfig
from cifar.rundir import Predictions, RunDir, TestMetrics, TrainResult
from study.search_space import suggest_config
from study.storage import UsageError, make_storage, resolve_study_name


def open_study(storage_url: str, name: str | None) -> optuna.Study:
    """The study ``name`` (or the storage's only study), which must have a complete trial."""
    storage = make_storage(storage_url, heartbeat_interval=None, grace_period=None, create=False)
    name = resolve_study_name(storage, storage_url, name)
    study = optuna.load_study(study_name=name, storage=storage)
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        raise UsageError(f"study {name!r} has no complete trial yet: run more trials first")
    return study


def configs_of(study: optuna.Study) -> tuple[TrainConfig, TrainConfig, int, int]:
    """(baseline config, tuned config, baseline trial number, best trial number)."""
    attrs = study.user_attrs
    if "base_config" not in attrs:
        raise UsageError(f"study {study.study_name!r} was not made by `python -m study run`")
    base = TrainConfig.from_dict(attrs["base_config"])
    space = attrs.get("space", "default")
    trials = study.get_trials(deepcopy=False)
    marked = [t for t in trials if t.user_attrs.get("baseline")]
    baseline_trial = marked[0] if marked else trials[0]
    best = study.best_trial
    baseline = suggest_config(optuna.trial.FixedTrial(baseline_trial.params), base, space)
    tuned = suggest_config(optuna.trial.FixedTrial(best.params), base, space)
    return baseline, tuned, baseline_trial.number, best.number


@dataclass
class LoadedRun:
    """A finished, evaluated run directory, read through its typed readers."""
    dir: RunDir
    results: TrainResult
    test: TestMetrics
    history: pd.DataFrame
    predictions: Predictions


def load_run(run_dir: Path) -> LoadedRun:
    """A finished, evaluated run directory; raises UsageError naming what is missing."""
    run = RunDir(run_dir)
    missing = run.missing(run.results, run.test_metrics, run.history, run.predictions)
    if missing:
        raise UsageError(f"run directory {run_dir} lacks {', '.join(missing)}")
    return LoadedRun(run, run.read_results(), run.read_test_metrics(), pd.DataFrame(run.read_history()),
                     run.read_predictions())
