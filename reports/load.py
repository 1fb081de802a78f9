"""Load: a study and the run directories of a report, as DataFrames and configs.

Nothing here writes. The baseline is the study's enqueued trial (user attribute
``baseline``); the candidates are its best complete trials with distinct
configs. All are rebuilt from the study's recorded base config (at the study's
target) and the trial's parameters.

Usage:
    study = open_study("sqlite:///results/study.db", "cifar-cpu")
    baseline, candidates = candidates_of(study, k=3)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from cifar.cli import UsageError
from cifar.config import TrainConfig
from cifar.rundir import Predictions, RunDir, TestMetrics, TrainResult
from study.search_space import trial_config
from study.storage import make_storage, resolve_study_name


def open_study(storage_url: str, name: str | None) -> optuna.Study:
    """The study ``name`` (or the storage's only study), which must have a complete trial."""
    storage = make_storage(storage_url, heartbeat_interval=None, grace_period=None, create=False)
    name = resolve_study_name(storage, storage_url, name)
    study = optuna.load_study(study_name=name, storage=storage)
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        raise UsageError(f"study {name!r} has no complete trial yet: run more trials first")
    return study


@dataclass(frozen=True)
class Candidate:
    name: str            # "baseline", "candidate 1", ...
    trial: int           # the study's trial it comes from
    val_acc: float       # that trial's value (seed 0, at the target)
    config: TrainConfig  # at the study's target, seed 0


def _candidate(name: str, t: optuna.trial.FrozenTrial, base: TrainConfig, space: str) -> Candidate:
    complete = t.state == TrialState.COMPLETE
    return Candidate(name, t.number, t.value if complete else float("nan"),
                     trial_config(t, base, space))


def candidates_of(study: optuna.Study, k: int) -> tuple[Candidate, list[Candidate]]:
    """The baseline, and the study's ``k`` best complete trials with distinct configs other than the
    baseline's, best first (by their validation accuracy at the target, seed 0)."""
    attrs = study.user_attrs
    if len(study.directions) > 1:
        raise UsageError(f"study {study.study_name!r} has several objectives ({', '.join(study.metric_names or [])}): "
                         "its report is its Pareto front and its pick: run `reports build` without --runs-only")
    if "base_config" not in attrs or "target_epochs" not in (attrs.get("budget") or {}):
        raise UsageError(f"study {study.study_name!r} was not made by this version of `python -m study run` "
                         "(it has no target budget)")
    base = TrainConfig.from_dict(attrs["base_config"])
    space = attrs.get("space", "default")
    trials = study.get_trials(deepcopy=False)
    marked = [t for t in trials if t.user_attrs.get("baseline")]
    baseline = _candidate("baseline", marked[0] if marked else trials[0], base, space)
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: (-t.value, t.number))
    seen, out = [baseline.config], []
    for t in complete:
        c = _candidate(f"candidate {len(out) + 1}", t, base, space)
        if c.config not in seen and len(out) < k:
            seen.append(c.config)
            out.append(c)
    if not out:
        raise UsageError(f"study {study.study_name!r} has no complete trial with a config other than the "
                         "baseline's: run more trials first")
    return baseline, out


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
