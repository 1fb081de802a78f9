"""Study workers: processes that load the study and run trials until the shared count is reached.

``--workers N`` starts N processes on one storage (spawned, each with its own sampler seed and a
share of the CPU threads; on GPUs, worker i trains on GPU i mod the number of GPUs); the same command
on other machines with one PostgreSQL URL joins the study. Under torchrun, rank 0 runs the study and
every rank trains each trial through a TorchDistributedTrial. ``Progress``: a line per trial, an ETA.

Usage:
    run_workers(Job(storage=..., study_name=..., base=cfg, ...))
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState

from cifar.config import TrainConfig
from cifar.data import prepare_data
from cifar.runtime import Dist
from cifar.sources import RawCifar
from study.objective import Objective
from study.objectives import Constraint, best_of, latency_cache
from study.pruning import epoch_share, make_pruner
from study.search_space import make_sampler
from study.storage import PATIENCE_S, lost_connection, make_storage
from study.trials import short


class Progress:
    """Study callback: one line per finished trial, with the study's ETA.

    The ETA counts pruning: the seconds per epoch of the finished trials, times the epochs a trial runs
    on average under the pruner (study.pruning.epoch_share), times the trials left, over the workers."""

    def __init__(self, n_trials: int | None, workers: int, max_epochs: int, pruner: str = "hyperband",
                 objectives: tuple[str, ...] = ("val_acc",)):
        self.n_trials, self.workers, self.max_epochs, self.objectives = n_trials, workers, max_epochs, objectives
        self.share = epoch_share(max_epochs, pruner)

    def eta_minutes(self, done: list[optuna.trial.FrozenTrial]) -> float | None:
        seconds = sum(t.duration.total_seconds() for t in done if t.duration)
        epochs = sum(t.user_attrs.get("epochs_run", 0) for t in done)
        if not self.n_trials or not epochs:
            return None
        left = max(0, self.n_trials - len(done))
        return left * self.max_epochs * self.share * seconds / epochs / self.workers / 60

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done = counted(study.get_trials(deepcopy=False))  # a killed trial's retry counts, not the trial
        eta = self.eta_minutes(done)
        costs = "".join(f" {n} {short(v)}" for n, v in zip(self.objectives[1:], (trial.values or [])[1:]))
        value = (f"({fail_reason(trial)[:120]})" if trial.state == TrialState.FAIL else
                 f"val_acc {trial.values[0]:.4f}{costs}" if trial.values else
                 f"last val_acc {max(trial.intermediate_values.items())[1]:.4f}" if trial.intermediate_values else "")
        params = " ".join(f"{k}={short(v)}" for k, v in trial.params.items())
        top = best_of(study)
        best = f"best val_acc {top.values[0]:.4f} (#{top.number})" if top else "no complete trial yet"
        elapsed = trial.duration.total_seconds() if trial.duration else 0.0
        total = f"/{self.n_trials}" if self.n_trials else ""
        epochs = f" {trial.user_attrs['epochs_run']}/{self.max_epochs} ep" if "epochs_run" in trial.user_attrs else ""
        print(f"trial {trial.number:3d} {trial.state.name:8s} {value}  [{params}]{epochs}  {elapsed:.0f} s  "
              f"| {best}  {len(done)}{total} done{'' if eta is None else f'  ETA {eta:.0f} min'}", flush=True)


def fail_reason(trial: optuna.trial.FrozenTrial) -> str:
    """Why a trial failed: the objective's record, or Optuna's (a stale heartbeat), or "failed"."""
    reason = trial.user_attrs.get("fail_reason") or trial.system_attrs.get("fail_reason") or "failed"
    return reason.splitlines()[0]


class FailingInARow(RuntimeError):
    """Trials keep failing: stopping beats spending the whole study's count on one broken cause.
    ``what`` says what failed; the message adds what to do."""

    def __init__(self, what: str):
        super().__init__(f"{what}; fix the cause and run the same command again (failed trials count "
                         "towards --n-trials)")
        self.what = what


class StorageLost(RuntimeError):
    """The database server stayed away longer than a worker waits (``PatientStorage``)."""

    def __init__(self, workers: str = "the worker"):
        super().__init__(f"{workers} lost the storage for over {PATIENCE_S:.0f} s and stopped; run the same command "
                         "again once the database is back (the trials they held are retried)")


class StopOnFailures:
    """Study callback: stop this worker after ``limit`` of its trials in a row failed."""

    def __init__(self, limit: int = 3):
        self.limit, self.in_a_row, self.last = limit, 0, ""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == TrialState.FAIL:
            self.in_a_row, self.last = self.in_a_row + 1, fail_reason(trial)
        else:
            self.in_a_row = 0
        if self.stopped:
            study.stop()

    @property
    def stopped(self) -> bool:
        return self.in_a_row >= self.limit


@dataclass(frozen=True)
class Job:
    storage: str
    study_name: str
    base: TrainConfig
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
    verbose: bool = False   # a line per epoch of every trial, too
    objectives: tuple[str, ...] = ("val_acc",)  # and any costs (study.objectives)
    constraint: Constraint | None = None


def load_study(job: Job, index: int) -> optuna.Study:
    """The study; worker ``index``'s sampler seed moves on by the finished trials (a resume redraws nothing)."""
    study = optuna.load_study(study_name=job.study_name, pruner=make_pruner(job.pruner, job.base.epochs),
                              storage=make_storage(job.storage, job.heartbeat_interval, job.grace_period))
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)))
    study.sampler = make_sampler(job.sampler, job.seed + index + done)
    return study


def make_objective(job: Job, uploads: bool = True, raw: RawCifar | None = None) -> Objective:
    """The objective over the job's data; ``uploads``: with the dashboard's artifact store;
    ``raw``: the data source already loaded in this process."""
    base = job.base
    store = None
    if uploads:
        Path(job.artifact_dir).mkdir(parents=True, exist_ok=True)
        store = FileSystemArtifactStore(job.artifact_dir)
    return Objective(base, prepare_data(base.data, raw=raw), Path(job.runs_root), store, job.space, job.verbose,
                     job.objectives, job.constraint, job.pruner, latency_cache(job.runs_root))


def worker(job: Job, index: int, raw: RawCifar | None = None) -> None:
    """One worker process: load the study and run trials until the shared count is reached."""
    torch.set_num_threads(job.threads)
    if torch.cuda.is_available():  # workers share the GPUs round-robin: worker i on GPU i mod count
        torch.cuda.set_device(index % torch.cuda.device_count())
    try:
        optimize(load_study(job, index), make_objective(job, raw=raw), job)
    except Exception as e:
        if lost_connection(e):
            raise StorageLost() from None
        raise


def reached(study: optuna.Study, n_trials: int) -> bool:
    """Whether ``n_trials`` trials count as finished and none waits to run. Complete, pruned and failed
    trials count, except a failed trial that the heartbeat retried: its retry counts instead. So a study
    does not stop with a retry left waiting (Optuna's MaxTrialsCallback would: the killed trial lost)."""
    trials = study.get_trials(deepcopy=False)
    return len(counted(trials)) >= n_trials and not any(t.state == TrialState.WAITING for t in trials)


def counted(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The finished trials that count towards ``n_trials``: all but a failed trial that a retry replaced."""
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and t.number not in retried)]


def until_reached(n_trials: int):
    """A study callback: stop once ``reached``."""
    def stop(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if reached(study, n_trials):
            study.stop()
    return stop


def optimize(study: optuna.Study, objective, job: Job) -> None:
    failures = StopOnFailures()
    callbacks: list = [Progress(job.n_trials, job.workers, job.base.epochs, job.pruner, job.objectives), failures]
    if job.n_trials:  # counted over every worker: the study stops at n_trials finished trials in total
        callbacks.append(until_reached(job.n_trials))
    # Progress prints every trial, failures with their reason; Optuna's own log would add
    # a traceback for a Ctrl-C.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    end = time.monotonic() + job.timeout if job.timeout else None
    # The callback looks only after a trial, so the count is checked before each optimize too: a study
    # resumed with its count reached would otherwise run one more trial.
    while not (end and time.monotonic() >= end) and not (job.n_trials and reached(study, job.n_trials)):
        try:
            study.optimize(objective, timeout=end and end - time.monotonic(), callbacks=callbacks,
                           catch=(RuntimeError,), gc_after_trial=True)
            break
        except ValueError as e:  # our trial was failed meanwhile: its beat came later than the grace period
            if not str(e).startswith("Cannot tell a"):
                raise
            print("warning: a trial of this worker was failed by another worker's heartbeat check while it ran "
                  "(its beat came later than --grace-period allows on a busy machine): its retry trains it "
                  "again; this worker goes on", flush=True)
    if failures.stopped:
        raise FailingInARow(f"{failures.limit} trials in a row failed, the last with {failures.last}")


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


WORKER_FAILING, WORKER_STORAGE_LOST = 3, 4  # a spawned worker's exit status: trials kept failing, storage gone


def _worker_entry(job: Job, index: int) -> None:
    try:
        worker(job, index)
    except KeyboardInterrupt:
        pass
    except FailingInARow as e:
        print(f"worker {index}: {e.what}", file=sys.stderr, flush=True)
        sys.exit(WORKER_FAILING)
    except StorageLost:
        sys.exit(WORKER_STORAGE_LOST)


def run_workers(job: Job, raw: RawCifar | None = None) -> None:
    """The job's workers: in this process when there is one (with ``raw``, the data it has loaded),
    else spawned processes, each loading the data itself."""
    if job.workers == 1:
        worker(job, 0, raw)
        return
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker_entry, args=(job, i), name=f"study-worker-{i}") for i in range(job.workers)]
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
    if lost := sum(p.exitcode == WORKER_STORAGE_LOST for p in procs):
        raise StorageLost(f"{lost} of {len(procs)} workers")
    failing = sum(p.exitcode == WORKER_FAILING for p in procs)
    if failing:
        raise FailingInARow(f"in {failing} of {len(procs)} workers, trials kept failing (the reasons above)")
