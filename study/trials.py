"""The trials of a study as a table, and the study's summary files.

``trials_table`` is the one trials table: ``study show`` prints it and the
report reads it. ``summarise`` writes a study's results folder: ``summary.json``,
``trials.csv`` and ``best_trial_config.json`` (the best single trial's config, at
the study's target; one seed's luck may have put it first: what to train is the
report's ``winner_config.json``, chosen on fresh seeds).

Usage:
    table = trials_table(study)
    summary = summarise(study, base, "default", Path("results/studies/cifar-cpu"))
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from cifar.config import TrainConfig
from cifar.runtime import describe_machine
from study.dashboard import browse_command
from study.objectives import best_of
from study.search_space import trial_config
from study.storage import STORAGE_ENV, has_password

BEST_TRIAL_CONFIG = "best_trial_config.json"  # the best single trial; not the recommendation


def short(v: Any) -> str:
    """A parameter value as a trial line prints it (floats to 3 significant digits)."""
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, val_acc (and any cost objectives), seconds, epochs_run,
    train_seconds, baseline, then the trial's parameters (blank where a parameter does not apply)."""
    rows, costs = [], study.metric_names[1:] if study.metric_names and len(study.directions) > 1 else []
    for t in study.get_trials(deepcopy=False):
        values = t.values or [None] * (1 + len(costs))
        rows.append({"number": t.number, "state": t.state.name, "val_acc": values[0], **dict(zip(costs, values[1:])),
                     "seconds": round(t.duration.total_seconds(), 1) if t.duration else None,
                     "epochs_run": t.user_attrs.get("epochs_run", len(t.intermediate_values)),
                     "train_seconds": t.user_attrs.get("train_seconds", 0.0),
                     "baseline": bool(t.user_attrs.get("baseline")), **t.params})
    return pd.DataFrame(rows)


def compute_spent(trials: pd.DataFrame) -> dict[str, float]:
    """What a study's trials cost: counts by state, trial-epochs and training seconds."""
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


CLOCK_SECONDS = 60.0  # how often a running command brings its minutes on record up to date


def record_session(study: optuna.Study, step: str, started: float) -> None:
    """Put this command's wall time so far and the machine it runs on in the study's ``sessions``
    user attribute (one entry per command, updated in place), so the main job's total time (every
    study and report session, resumed or not) is on record with the machine that took it."""
    entry = {"step": step, "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
             "minutes": round((time.time() - started) / 60, 2), "host": platform.node(), "pid": os.getpid(),
             "machine": describe_machine()}
    same = ("step", "started", "host", "pid")
    sessions = [s for s in study.user_attrs.get("sessions", []) if any(s.get(k) != entry[k] for k in same)]
    study.set_user_attr("sessions", [*sessions, entry])


@contextlib.contextmanager
def session_clock(study: optuna.Study, step: str, started: float) -> Iterator[None]:
    """Keep this command's minutes on record while it runs (every ``CLOCK_SECONDS``) and at its end: a
    command killed mid-way (a session that ends, a SIGKILL) still counts, up to its last tick."""
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(CLOCK_SECONDS):
            try:
                record_session(study, step, started)
            except Exception:  # noqa: BLE001 (a busy storage skips a tick; the next one catches up)
                pass

    record_session(study, step, started)
    thread = threading.Thread(target=tick, daemon=True, name="session-clock")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        record_session(study, step, started)


def job_minutes(study: optuna.Study) -> dict[str, float]:
    """Minutes spent by the study and report commands on record, by step."""
    out: dict[str, float] = {}
    for s in study.user_attrs.get("sessions", []):
        out[s["step"]] = round(out.get(s["step"], 0.0) + s["minutes"], 2)
    return out


def summarise(study: optuna.Study, base: TrainConfig, space: str, out_dir: Path) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    out_dir.mkdir(parents=True, exist_ok=True)
    trials_table(study).to_csv(out_dir / "trials.csv", index=False)
    summary: dict[str, Any] = {"study_name": study.study_name, "trials": len(trials), **counts,
                               "user_attrs": study.user_attrs}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = best_of(study)
        cfg = trial_config(best, base, space)
        cfg.to_json(out_dir / BEST_TRIAL_CONFIG)  # as the trial ran: at the study's target
        summary.update(best_trial=best.number, best_value=best.values[0], best_params=best.params)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def next_steps(summary: dict[str, Any], out: Path, storage: str, study_name: str, artifact_dir: str,
               several: bool) -> list[str]:
    """A finished study's closing lines: where its results are, how to browse it, and, once a trial is
    complete, its best trial, the report's command and what the report hands over (a multi-objective
    study's report (``several``) picks a model to deploy; a single objective's, a config to train)."""
    lines = [f"results: {out}/ (summary.json, trials.csv)", f"browse:  {browse_command(storage, artifact_dir)}"]
    if "best_value" not in summary:
        return lines
    params = " ".join(f"{k}={short(v)}" for k, v in summary["best_params"].items())
    given = f" (the storage from ${STORAGE_ENV})" if has_password(storage) else f" --storage {storage}"
    folder = f"results/reports/{study_name}/"  # under the report's --out
    return [f"best val_acc {summary['best_value']:.4f} (trial {summary['best_trial']}): {params}", *lines,
            f"report:  python -m reports build{given} --study-name {study_name}   (make study runs it next)",
            f"what to deploy: the report's pick within its cost limit (the --constraint, else half the baseline's), "
            f"{folder}pick.onnx where one is (under the report's --out), compared with the baseline on fresh seeds"
            if several else
            f"what to train: the report's winner, {folder}winner_config.json (under the report's --out), chosen "
            f"among the top trials on fresh seeds (the study's best single trial, one seed that may be luck: "
            f"{out}/best_trial_config.json)"]
