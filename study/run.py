"""Create or resume a study, run its workers, and summarise it.

A study lives in an RDB storage (SQLite file by default, any SQLAlchemy URL,
PostgreSQL when several machines share it) with heartbeats: a worker killed
mid-trial leaves a RUNNING trial that the next trial start marks FAIL after
the grace period and re-enqueues with the same parameters. ``--workers N``
starts N processes on one storage and splits the CPU threads between them;
the same command on other machines with one PostgreSQL URL joins the study.

Usage:
    python -m study run [--preset auto|smoke|cpu|gpu] [--n-trials 30] [--workers 2]
    python -m study run --storage postgresql://host/db --study-name cifar-cpu
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from cifar.config import TrainConfig, apply_overrides
from cifar.data import prepare_data
from cifar.train import Dist, init_distributed
from study import budget as budget_lib
from study.objective import Objective
from study.search_space import SPACES, params_of, suggest_config

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STORAGE = "sqlite:///results/study.db"
SAMPLERS = ("tpe", "random", "gp")
PRUNERS = ("hyperband", "halving", "median", "none")


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


PRESETS = {
    "smoke": Preset(n_trials=6, max_epochs=2, train_fraction=0.05, timeout=None),
    "cpu": Preset(n_trials=30, max_epochs=9, train_fraction=0.15, timeout=3600, minutes=45),
    "gpu": Preset(n_trials=100, max_epochs=15, train_fraction=1.0, timeout=None),
}


class UsageError(ValueError):
    """Bad command-line input: exit status 2, database untouched."""


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=8)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.GPSampler(seed=seed)


def make_pruner(name: str, max_epochs: int) -> optuna.pruners.BasePruner:
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs,
                                              reduction_factor=budget_lib.REDUCTION_FACTOR)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=budget_lib.REDUCTION_FACTOR)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def make_storage(url: str, heartbeat_interval: int | None = 60, grace_period: int | None = 180,
                 create: bool = True) -> RDBStorage:
    """An RDB storage with heartbeats; one-line errors for bad URLs and unreachable servers."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UsageError(f"malformed storage URL {url!r}; e.g. sqlite:///results/study.db or "
                         "postgresql://user@host/db") from None
    engine_kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database or ""
        if db and db != ":memory:":
            if not create and not Path(db).is_file():
                raise UsageError(f"no study database at {db}")
            if not Path(db).parent.is_dir():
                raise UsageError(f"directory of the SQLite file {db} does not exist")
        # Wait for the lock instead of failing: several workers write to one file.
        engine_kwargs["connect_args"] = {"timeout": 120}
    else:
        engine_kwargs["pool_pre_ping"] = True
    # Heartbeats and their retry callback are marked experimental; they are what we rely on.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    retry = RetryHeartbeatStaleTrialCallback(max_retry=2) if heartbeat_interval else None
    try:
        return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                          grace_period=grace_period, heartbeat_stale_trial_callback=retry)
    except sqlalchemy.exc.NoSuchModuleError:
        raise UsageError(f"no SQLAlchemy driver for {parsed.drivername!r} in {url!r}") from None
    except ImportError:
        raise UsageError(f"the database driver for {parsed.drivername!r} is not installed") from None
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.DatabaseError) as e:
        first = str(getattr(e, "orig", e)).strip().splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"cannot open storage {parsed.render_as_string(hide_password=True)}: {first}") \
            from None


def artifact_dir_for(storage_url: str) -> Path:
    """Artifacts sit next to a SQLite file; otherwise under results/artifacts."""
    if storage_url.startswith("sqlite:///"):
        db = Path(storage_url[len("sqlite:///"):])
        return db.with_name(db.stem + "-artifacts")
    return Path("results") / "artifacts"


def pick_preset(name: str) -> str:
    if name != "auto":
        return name
    return "gpu" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------- progress


class Progress:
    """Study callback: one line per finished trial, with the study's ETA."""

    def __init__(self, n_trials: int | None, workers: int):
        self.n_trials, self.workers = n_trials, workers

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state.is_finished()]
        durations = [t.duration.total_seconds() for t in done if t.duration]
        eta = ""
        if self.n_trials and durations:
            left = max(0, self.n_trials - len(done)) * (sum(durations) / len(durations)) / self.workers
            eta = f"  ETA {left / 60:.1f} min"
        if trial.state == TrialState.FAIL:
            value = f"({trial.system_attrs.get('fail_reason', 'failed').splitlines()[0][:120]})"
        elif trial.value is not None:
            value = f"val_acc {trial.value:.4f}"
        elif trial.intermediate_values:
            value = f"last val_acc {max(trial.intermediate_values.items())[1]:.4f}"
        else:
            value = ""
        params = " ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
        try:
            best = f"best {study.best_value:.4f} (#{study.best_trial.number})"
        except ValueError:
            best = "no complete trial yet"
        elapsed = trial.duration.total_seconds() if trial.duration else 0.0
        total = f"/{self.n_trials}" if self.n_trials else ""
        print(f"trial {trial.number:3d} {trial.state.name:8s} {value}  [{params}]  {elapsed:.0f} s  "
              f"| {best}  {len(done)}{total} done{eta}", flush=True)


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------- workers


@dataclass(frozen=True)
class Job:
    storage: str
    study_name: str
    base: dict[str, Any]
    space: str
    sampler: str
    pruner: str
    seed: int
    n_trials: int | None
    timeout: float | None
    threads: int
    heartbeat_interval: int
    grace_period: int
    runs_root: str
    artifact_dir: str
    workers: int


def load_study(job: Job, index: int) -> optuna.Study:
    """The study with worker ``index``'s own sampler seed and the job's pruner."""
    storage = make_storage(job.storage, job.heartbeat_interval, job.grace_period)
    return optuna.load_study(study_name=job.study_name, storage=storage,
                             sampler=make_sampler(job.sampler, job.seed + index),
                             pruner=make_pruner(job.pruner, job.base["epochs"]))


def make_objective(job: Job, uploads: bool = True) -> Objective:
    """The objective over the job's data; ``uploads``: with the dashboard's artifact store."""
    base = TrainConfig.from_dict(job.base)
    store = None
    if uploads:
        Path(job.artifact_dir).mkdir(parents=True, exist_ok=True)
        store = FileSystemArtifactStore(job.artifact_dir)
    return Objective(base, prepare_data(base.data), Path(job.runs_root), store, job.space)


def worker(job: Job, index: int) -> None:
    """One worker process: load the study and run trials until the shared count is reached."""
    torch.set_num_threads(job.threads)
    optimize(load_study(job, index), make_objective(job), job)


def optimize(study: optuna.Study, objective, job: Job) -> None:
    callbacks: list = [Progress(job.n_trials, job.workers)]
    if job.n_trials:
        # Counted over every worker: the study stops at n_trials finished trials in total.
        callbacks.append(optuna.study.MaxTrialsCallback(
            job.n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)))
    # Progress prints every trial, failures with their reason; Optuna's own log would add
    # a traceback for a Ctrl-C.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study.optimize(objective, timeout=job.timeout, callbacks=callbacks, catch=(RuntimeError,),
                   gc_after_trial=True)


def distributed_worker(job: Job, rank: Dist) -> None:
    """This rank's part of a study whose trials each train one model over a torchrun job.

    Rank 0 runs the study; before each trial it tells the other ranks that one follows,
    and every rank then runs the same objective through a TorchDistributedTrial, which
    hands rank 0's suggestions and pruning decisions to all. So a pruned trial ends on
    every rank at the same epoch, and no rank waits for one that stopped.
    """
    import torch.distributed as dist
    from optuna_integration import TorchDistributedTrial

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // rank.world))

    def another_trial(go: bool | None = None) -> bool:
        box = [go]
        dist.broadcast_object_list(box, src=0)
        return bool(box[0])

    if not rank.is_main:
        objective = make_objective(job, uploads=False)
        while another_trial():
            try:
                objective.run(TorchDistributedTrial(None), None)
            except optuna.TrialPruned:
                pass
        return
    study, objective = load_study(job, 0), make_objective(job)

    def each_trial(trial: optuna.Trial) -> float:
        another_trial(True)
        return objective.run(TorchDistributedTrial(trial), trial)

    try:
        optimize(study, each_trial, job)
    finally:
        another_trial(False)


def _worker_entry(job: Job, index: int) -> None:
    try:
        worker(job, index)
    except KeyboardInterrupt:
        pass


def run_workers(job: Job) -> None:
    if job.workers == 1:
        worker(job, 0)
        return
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker_entry, args=(job, i), name=f"study-worker-{i}")
             for i in range(job.workers)]
    for p in procs:
        p.start()
        time.sleep(1.0)  # stagger the first trials so the sampler sees each other's RUNNING trials
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.join(timeout=30)
        raise


# ---------------------------------------------------------------- summary


COLUMNS = ["number", "state", "value", "duration", "user_attrs_epochs_run"]


def trials_table(study: optuna.Study) -> pd.DataFrame:
    df = study.trials_dataframe(attrs=("number", "value", "duration", "params", "user_attrs", "state"))
    if df.empty:
        return df
    params = [c for c in df.columns if c.startswith("params_")]
    keep = [c for c in COLUMNS if c in df.columns] + params
    table = df[keep].rename(columns=lambda c: c.removeprefix("params_").removeprefix("user_attrs_"))
    table["duration"] = table["duration"].dt.total_seconds().round(1)
    return table.rename(columns={"duration": "seconds"})


def summarise(study: optuna.Study, base: TrainConfig, space: str, out_dir: Path) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    out_dir.mkdir(parents=True, exist_ok=True)
    trials_table(study).to_csv(out_dir / "trials.csv", index=False)
    summary: dict[str, Any] = {"study_name": study.study_name, "trials": len(trials), **counts,
                               "user_attrs": study.user_attrs}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        cfg = suggest_config(optuna.trial.FixedTrial(best.params), base, space)
        cfg.to_json(out_dir / "best_config.json")
        summary.update(best_trial=best.number, best_value=best.value, best_params=best.params)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


# ---------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m study run", description="Create or resume a tuning study and run it.")
    p.add_argument("--study-name", default=None, help="default: cifar-<preset>")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="any SQLAlchemy URL")
    p.add_argument("--preset", default="auto", choices=("auto", *PRESETS))
    p.add_argument("--config", default=str(ROOT / "configs" / "baseline.json"), help="base config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base config field (repeatable)")
    p.add_argument("--space", default="default", choices=SPACES)
    p.add_argument("--n-trials", type=int, default=None, help="finished trials to reach (default: preset)")
    p.add_argument("--timeout", type=float, default=None, help="seconds (default: preset)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--sampler", default="tpe", choices=SAMPLERS)
    p.add_argument("--pruner", default="hyperband", choices=PRUNERS)
    p.add_argument("--seed", type=int, default=0, help="sampler seed (worker i uses seed + i)")
    p.add_argument("--heartbeat-interval", type=int, default=30, help="seconds")
    p.add_argument("--grace-period", type=int, default=120, help="seconds without heartbeat -> FAIL")
    p.add_argument("--artifact-dir", default=None,
                   help="dashboard artifacts (default: beside a SQLite file, else results/artifacts)")
    p.add_argument("--runs-dir", default="runs/studies", help="trial run directories go here")
    p.add_argument("--results-dir", default="results/studies", help="summary, trials.csv, best_config.json")
    return p


def prepare(argv: Sequence[str]) -> tuple[Job, optuna.Study, TrainConfig, str]:
    """Validate everything, then create or load the study. Raises UsageError on bad input."""
    args = build_parser().parse_args(argv)
    preset_name = pick_preset(args.preset)
    preset = PRESETS[preset_name]
    n_trials = preset.n_trials if args.n_trials is None else args.n_trials
    if n_trials <= 0:
        raise UsageError(f"--n-trials must be > 0, got {n_trials}")
    if args.workers <= 0:
        raise UsageError(f"--workers must be > 0, got {args.workers}")
    if args.heartbeat_interval <= 0 or args.grace_period <= args.heartbeat_interval:
        raise UsageError("need 0 < --heartbeat-interval < --grace-period")
    # The preset sets the trial budget; --set may still change it (recorded either way).
    overrides: dict[str, str | float] = {"epochs": preset.max_epochs, "train_fraction": preset.train_fraction}
    for kv in args.set:
        key, sep, value = kv.partition("=")
        if not sep:
            raise UsageError(f"--set takes KEY=VALUE, got {kv!r}")
        overrides[key] = value
    try:
        base = apply_overrides(TrainConfig.from_json(args.config), overrides)
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        baseline_params = params_of(base, args.space)
    except ValueError as e:
        raise UsageError(str(e)) from None
    study_name = args.study_name or f"cifar-{preset_name}"
    storage = make_storage(args.storage, args.heartbeat_interval, args.grace_period)
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if study_name in existing and existing[study_name].direction != optuna.study.StudyDirection.MAXIMIZE:
        raise UsageError(f"study {study_name!r} in {args.storage} minimizes; this one maximizes val_acc: "
                         "choose another --study-name")
    budget_set = BUDGET_FIELDS.keys() & {kv.partition("=")[0] for kv in args.set}
    if study_name in existing:  # a resumed study keeps the budget it was created with
        stored = existing[study_name].user_attrs.get("budget", {})
        keep = {k: stored[a] for k, a in BUDGET_FIELDS.items() if a in stored and k not in budget_set}
        base = apply_overrides(base, keep)
        budget = stored
    else:
        budget = fit_budget(preset, base) if preset.minutes and not budget_set else {}
        base = apply_overrides(base, {k: budget[a] for k, a in BUDGET_FIELDS.items() if a in budget})
        budget |= {"max_epochs": base.epochs, "train_fraction": base.data.train_fraction,
                   "warmup_epochs": base.warmup_epochs}
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize",
                                load_if_exists=True)
    if study_name not in existing:
        study.set_user_attr("preset", preset_name)
        study.set_user_attr("budget", budget)
        study.set_user_attr("space", args.space)
        study.set_user_attr("base_config", base.to_dict())
        study.set_user_attr("sampler", args.sampler)
        study.set_user_attr("pruner", args.pruner)
        # The baseline is always trial 0, so every study contains it.
        study.enqueue_trial(baseline_params, user_attrs={"baseline": True})
    elif study.user_attrs.get("space", args.space) != args.space:
        raise UsageError(f"study {study_name!r} searched the {study.user_attrs['space']!r} space; "
                         f"resume it with --space {study.user_attrs['space']}")
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    job = Job(storage=args.storage, study_name=study_name, base=base.to_dict(), space=args.space,
              sampler=args.sampler, pruner=args.pruner, seed=args.seed, n_trials=n_trials,
              timeout=preset.timeout if args.timeout is None else args.timeout, threads=threads,
              heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period,
              runs_root=str(Path(args.runs_dir) / study_name),
              artifact_dir=args.artifact_dir or str(artifact_dir_for(args.storage)), workers=args.workers)
    return job, study, base, args.results_dir


# --set keys that make up a trial's budget, and their names in the study's "budget" attribute
BUDGET_FIELDS = {"epochs": "max_epochs", "train_fraction": "train_fraction", "warmup_epochs": "warmup_epochs"}


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


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return main_distributed(argv)
    try:
        job, study, base, results_dir = prepare(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    started = time.time()
    announce(job, base)
    interrupted = False
    try:
        run_workers(job)
    except KeyboardInterrupt:
        interrupted = True
    return finish(study, job, base, results_dir, started, interrupted)


def main_distributed(argv: Sequence[str]) -> int:
    """Under torchrun: rank 0 validates and prepares the study, then every rank trains each trial."""
    import torch.distributed as dist

    rank = init_distributed("auto")
    prepared: tuple | None = None
    error = None
    if rank.is_main:
        try:
            prepared = prepare(argv)
            if prepared[0].workers != 1:
                raise UsageError("--workers must be 1 under torchrun: the job's processes train one trial together")
        except UsageError as e:
            error = str(e)
    box = [prepared[0] if prepared else None, error]
    dist.broadcast_object_list(box, src=0)
    job, error = box
    if error:
        if rank.is_main:
            print(f"error: {error}", file=sys.stderr)
        dist.destroy_process_group()
        return 2
    started = time.time()
    if rank.is_main:
        announce(job, prepared[2], f" x {rank.world} processes (DDP)")
    interrupted = False
    try:
        distributed_worker(job, rank)
    except KeyboardInterrupt:
        interrupted = True
    code = finish(prepared[1], job, prepared[2], prepared[3], started, interrupted) if rank.is_main else 0
    dist.destroy_process_group()
    return code


def announce(job: Job, base: TrainConfig, processes: str = "") -> None:
    print(f"study {job.study_name!r} in {job.storage}: {job.workers} worker(s){processes} x {job.threads} "
          f"thread(s), up to {job.n_trials} trials, {base.epochs} epochs max on {base.data.train_fraction:.0%} "
          f"of the train split, sampler {job.sampler}, pruner {job.pruner}", flush=True)


def finish(study: optuna.Study, job: Job, base: TrainConfig, results_dir: str, started: float,
           interrupted: bool) -> int:
    summary = summarise(study, base, job.space, Path(results_dir) / job.study_name)
    minutes = (time.time() - started) / 60
    print(f"{'stopped' if interrupted else 'done'} after {minutes:.1f} min: {summary['trials']} trials, "
          f"{summary['complete']} complete, {summary['pruned']} pruned, {summary['fail']} failed")
    if "best_value" in summary:
        print(f"best val_acc {summary['best_value']:.4f} (trial {summary['best_trial']}): "
              f"{summary['best_params']}")
    if interrupted:
        print("run the same command again to resume the study", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
