"""Load: a study and the run directories of a report, as DataFrames and configs.

Nothing here writes. The baseline is the study's enqueued trial (user attribute
``baseline``); the tuned configuration is its best complete trial. Both are
rebuilt from the study's recorded base config and the trial's parameters.

Usage:
    study = open_study("sqlite:///results/study.db", "cifar-cpu")
    baseline, tuned = configs_of(study)
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd
import torch
from optuna.trial import TrialState

from cifar.config import TrainConfig
from study.run import UsageError, make_storage
from study.search_space import suggest_config


def open_study(storage_url: str, name: str | None) -> optuna.Study:
    """The study ``name`` (or the storage's only study), which must have a complete trial."""
    storage = make_storage(storage_url, heartbeat_interval=None, grace_period=None, create=False)
    names = optuna.get_all_study_names(storage)
    if name is None:
        if len(names) != 1:
            raise UsageError(f"{storage_url} holds {len(names)} studies ({', '.join(names) or 'none'}): "
                             "choose one with --study-name")
        name = names[0]
    if name not in names:
        raise UsageError(f"no study {name!r} in {storage_url}; it has: {', '.join(names) or 'none'}")
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


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value, epochs_run, train_seconds and the parameters."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     "epochs_run": t.user_attrs.get("epochs_run", len(t.intermediate_values)),
                     "train_seconds": t.user_attrs.get("train_seconds", 0.0),
                     "baseline": bool(t.user_attrs.get("baseline")),
                     **{f"param_{k}": v for k, v in t.params.items()}})
    return pd.DataFrame(rows)


def compute_spent(trials: pd.DataFrame) -> dict[str, float]:
    finished = trials[trials["state"].isin(["COMPLETE", "PRUNED"])]
    return {
        "trials": int(len(trials)),
        "complete": int((trials["state"] == "COMPLETE").sum()),
        "pruned": int((trials["state"] == "PRUNED").sum()),
        "failed": int((trials["state"] == "FAIL").sum()),
        "pruned_share": float((finished["state"] == "PRUNED").mean()) if len(finished) else 0.0,
        "trial_epochs": int(trials["epochs_run"].sum()),
        "train_seconds": float(trials["train_seconds"].sum()),
    }


def load_run(run_dir: Path) -> dict:
    """A finished, evaluated run directory; raises UsageError naming what is missing."""
    need = ["results.json", "test_metrics.json", "metrics.csv", "test_predictions.pt"]
    missing = [n for n in need if not (run_dir / n).is_file()]
    if missing:
        raise UsageError(f"run directory {run_dir} lacks {', '.join(missing)}")
    return {
        "dir": run_dir,
        "results": json.loads((run_dir / "results.json").read_text()),
        "test": json.loads((run_dir / "test_metrics.json").read_text()),
        "history": pd.read_csv(run_dir / "metrics.csv"),
        "predictions": torch.load(run_dir / "test_predictions.pt", weights_only=True),
    }
