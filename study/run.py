"""``python -m study run``: validate the command line, create or resume the study, run it, summarise.

Everything is checked before the study is created or changed (a bad flag is one line and exit
status 2, the database untouched). A new study gets its target (the preset's, or ``--target-epochs``):
every trial is a run of that many epochs on the whole train split that the pruner may stop early.
Where the preset says so, the number of trials is sized to the machine. The baseline is the enqueued
trial 0; a resumed study keeps what it was created with.

Usage:
    python -m study run [--preset auto|smoke|cpu|gpu] [--target-epochs 4] [--n-trials 30] [--workers 2]
    python -m study run --storage postgresql://host/db --study-name cifar-cpu
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
import torch

from cifar.cli import ArgParser, UsageError, fail, number, split_set
from cifar.config import TrainConfig, apply_overrides
from cifar.data import DataError, check_data
from cifar.runtime import init_distributed, launched_by_torchrun
from cifar.sources import RawCifar
from study.objectives import directions, study_objectives
from study.presets import PRESETS, pick_preset, target_budget
from study.pruning import (
    COST_PRUNERS,
    PRUNERS,
    default_pruner,
    first_rung,
    measured_first_rung,
    pareto_first_rung,
    rule_conflict,
)
from study.retry import recover_running
from study.search_space import SAMPLERS, SPACES, params_of
from study.storage import (
    DEFAULT_STORAGE,
    STORAGE_ENV,
    artifact_dir_for,
    crowding_warning,
    default_storage,
    holds_no_study,
    make_storage,
    redact,
)
from study.trials import next_steps, record_session, session_clock, summarise
from study.workers import FailingInARow, Job, StorageLost, distributed_worker, run_workers

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Prepared:
    """A validated command line and the study it created or loaded."""
    job: Job
    study: optuna.Study
    base: TrainConfig      # the base config at the study's target
    results_dir: str       # the study's summary goes to results_dir/<study name>
    raw: RawCifar          # the data source as checked (a single worker reuses it)


def build_parser() -> ArgParser:
    p = ArgParser(prog="python -m study run", description="Create or resume a tuning study and run it.")
    p.add_argument("--study-name", default=None,
                   help="default: the storage's only study, or cifar-<preset> in an empty storage")
    p.add_argument("--storage", default=None,
                   help=f"any SQLAlchemy URL; default: ${STORAGE_ENV}, else {DEFAULT_STORAGE} (a URL with a "
                        "password is best given in the environment: off the command line, out of shell history)")
    p.add_argument("--preset", default="auto", choices=("auto", *PRESETS))
    p.add_argument("--config", default=str(ROOT / "configs" / "fast.json"),
                   help="base config: the baseline, trial 0")
    p.add_argument("--target-epochs", type=number(int, 1, 10_000), default=None,
                   help="epochs of the target run: each trial's, and the report's (default: preset)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base config field (repeatable)")
    p.add_argument("--space", default="default", choices=SPACES)
    p.add_argument("--n-trials", type=number(int, 1, 1_000_000), default=None,
                   help="finished trials to reach (default: preset, sized to the machine where it says so)")
    p.add_argument("--timeout", type=number(float, 0, 1e8, above=True), default=None, help="seconds")
    p.add_argument("--minutes", type=number(float, 0, 1e6, above=True), default=None,
                   help="the main job's time (study and report) that a new study is sized to "
                        "(default: the preset's; cpu: 170)")
    p.add_argument("--workers", type=number(int, 1, 1024), default=None,
                   help="worker processes (default: preset; gpu: 4 per GPU, cpu: 1); 1 under torchrun")
    p.add_argument("--sampler", default="tpe", choices=SAMPLERS)
    p.add_argument("--objectives", default=None, help="val_acc, then any of latency (ms, ONNX Runtime here), flops, "
                   "params: several make a multi-objective study, which Optuna cannot prune (default: val_acc)")
    p.add_argument("--constraint", default=None, metavar="NAME<=LIMIT", help="e.g. latency<=4: trials above it "
                   "are infeasible to the sampler (one of the --objectives)")
    p.add_argument("--pruner", default=None, choices=PRUNERS,
                   help="default: a resumed study's own, else hyperband where bench/fidelity.py measured a rung "
                        "at the study's target, none where not (docs/study.md)")
    p.add_argument("--seed", type=number(int, 0, 2**31 - 1), default=0, help="sampler seed (worker i uses seed + i)")
    p.add_argument("--heartbeat-interval", type=number(int, 1, 86_400), default=30, help="seconds")
    p.add_argument("--grace-period", type=number(int, 2, 864_000), default=120, help="seconds without heartbeat")
    p.add_argument("--artifact-dir", default=None,
                   help="dashboard artifacts (default: beside a SQLite file, else results/artifacts)")
    p.add_argument("--runs-dir", default="runs/studies", help="trial run directories go here")
    p.add_argument("--out", "--results-dir", dest="results_dir", default="results/studies",
                   help="the folder each study's results go to: <out>/<study>/ (summary, trials.csv, "
                        "best_trial_config.json)")
    p.add_argument("-v", "--verbose", action="store_true", help="also a line per epoch of every trial")
    return p


def prepare(argv: Sequence[str]) -> Prepared:
    """Validate everything, then create or load the study. Raises UsageError on bad input."""
    args = build_parser().parse_args(argv)
    args.storage = args.storage or default_storage()
    preset_name = pick_preset(args.preset)
    preset = PRESETS.get(preset_name)
    if args.minutes is not None:
        if not preset.minutes:
            raise UsageError(f"--minutes sizes the job to this machine, which the {preset_name} preset does not do")
        preset = replace(preset, minutes=args.minutes)
    workers = args.workers or (1 if launched_by_torchrun() else preset.workers * max(1, torch.cuda.device_count()))
    if args.grace_period <= args.heartbeat_interval:
        raise UsageError("need --heartbeat-interval < --grace-period")
    sets = dict(split_set(kv) for kv in args.set)
    if "epochs" in sets:
        raise UsageError("a study trains at its target: set the epochs with --target-epochs, not --set epochs")
    try:
        base = apply_overrides(TrainConfig.from_json(args.config), sets)
        baseline_params = params_of(base, args.space)
        # before anything is created: a new SQLite file has nothing to resume (a resume naming none: below)
        if args.objectives or holds_no_study(args.storage):
            study_objectives(args.objectives, args.constraint, None, args.pruner, launched_by_torchrun(), args.space)
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:  # the data before anything is created; a single worker reuses what this loads
        raw = check_data(base.data)
    except (DataError, ValueError) as e:
        raise UsageError(str(e)) from None
    storage = make_storage(args.storage, args.heartbeat_interval, args.grace_period)
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    study_name = args.study_name or default_study_name(existing, f"cifar-{preset_name}", args.storage)
    try:
        objectives, constraint = study_objectives(args.objectives, args.constraint, existing.get(study_name),
                                                  args.pruner, launched_by_torchrun(), args.space)
    except ValueError as e:
        raise UsageError(str(e)) from None
    stored = existing[study_name].user_attrs.get("budget") if study_name in existing else None
    if stored and args.target_epochs and args.target_epochs != stored.get("target_epochs"):
        raise UsageError(f"study {study_name!r} trains at a target of {stored.get('target_epochs')} epochs; "
                         "a new --target-epochs needs a new --study-name")
    if study_name in existing and not stored:
        raise UsageError(f"study {study_name!r} in {redact(args.storage)} has no target budget (made by an older "
                         "version?): choose another --study-name")
    # A resumed study keeps its pruner unless another is given (one whose rungs rank trials by the same costs).
    attrs = existing[study_name].user_attrs if stored else {}
    pruner = args.pruner or attrs.get("pruner") or ("none" if len(objectives) > 1 else None)
    if conflict := rule_conflict(attrs, pruner):
        raise UsageError(f"study {study_name!r} {conflict}")
    base, budget = target_budget(preset, base, stored, args.target_epochs, pruner)
    pruner = pruner or default_pruner(base.epochs)
    rung, why = ((pareto_first_rung(base.epochs), "ParetoHalving: a quarter, x3") if pruner in COST_PRUNERS
                 else measured_first_rung(base.epochs))
    print(f"pruning: {pruner}" + (f", from epoch {rung} of {base.epochs} ({why})" if pruner != "none" and rung else
                                  f" ({why})" if pruner == "none" else
                                  f", from epoch {first_rung(base.epochs)} of {base.epochs}, a rung no "
                                  f"measurement supports ({why})"), flush=True)
    n_trials = args.n_trials or budget.get("n_trials", preset.n_trials)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what happens
    study = optuna.create_study(study_name=study_name, storage=storage, directions=directions(objectives),
                                load_if_exists=True)
    if study_name not in existing:
        for key, value in {"preset": preset_name, "budget": budget, "space": args.space,
                           "base_config": base.to_dict(), "sampler": args.sampler, "pruner": pruner,
                           "pruner_rule": COST_PRUNERS.get(pruner),
                           "objectives": list(objectives), "constraint": args.constraint}.items():
            study.set_user_attr(key, value)
        # The baseline is always trial 0, so every study contains it.
        study.enqueue_trial(baseline_params, user_attrs={"baseline": True})
        study.set_metric_names(list(objectives))  # optuna-dashboard names them, not "Objective 0"
    elif study.user_attrs.get("space", args.space) != args.space:
        raise UsageError(f"study {study_name!r} searched the {study.user_attrs['space']!r} space; "
                         f"resume it with --space {study.user_attrs['space']}")
    else:
        for line in recover_running(study, args.grace_period):
            print(line, flush=True)
    threads = max(1, len(os.sched_getaffinity(0)) // workers)  # the CPUs this process may use (taskset)
    job = Job(storage=args.storage, study_name=study_name, base=base, space=args.space,
              sampler=args.sampler, pruner=pruner, seed=args.seed, n_trials=n_trials,
              timeout=preset.timeout if args.timeout is None else args.timeout, threads=threads,
              heartbeat_interval=args.heartbeat_interval, grace_period=args.grace_period,
              runs_root=str(Path(args.runs_dir) / study_name),
              artifact_dir=args.artifact_dir or str(artifact_dir_for(args.storage)), workers=workers,
              verbose=args.verbose, objectives=objectives, constraint=constraint)
    return Prepared(job, study, base, args.results_dir, raw)


def default_study_name(existing: Sequence[str], new: str, url: str) -> str:
    """As ``study show`` and ``reports build`` do: the storage's only study; ``new`` in an empty one."""
    if len(existing) > 1:
        raise UsageError(f"{redact(url)} holds {len(existing)} studies ({', '.join(existing)}): choose one with "
                         "--study-name (a new name starts a new study)")
    return next(iter(existing), new)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if launched_by_torchrun():
        return main_distributed(argv)
    try:
        prepared = prepare(argv)
    except UsageError as e:
        return fail(e)
    started = time.time()
    announce(prepared)
    interrupted, failing = False, None
    try:
        with session_clock(prepared.study, "study", started):
            run_workers(prepared.job, prepared.raw)
    except KeyboardInterrupt:
        interrupted = True
    except FailingInARow as e:
        failing = e
    except StorageLost as e:  # nothing more to record where the database is gone
        print(f"error: {e}", file=sys.stderr)
        return 1
    code = finish(prepared, started, interrupted)
    if failing:
        print(f"error: {failing}", file=sys.stderr)
        return 1
    return code


def main_distributed(argv: Sequence[str]) -> int:
    """Under torchrun: rank 0 validates and prepares the study, then every rank trains each trial."""
    import torch.distributed as dist

    rank = init_distributed("auto")
    prepared, error = None, None
    if rank.is_main:
        try:
            prepared = prepare(argv)
            if prepared.job.workers != 1:
                raise UsageError("--workers must be 1 under torchrun: the job's processes train one trial together")
        except UsageError as e:
            error = str(e)
    box = [prepared.job if prepared else None, error]
    dist.broadcast_object_list(box, src=0)
    job, error = box
    if error:
        if rank.is_main:
            print(f"error: {error}", file=sys.stderr)
        dist.destroy_process_group()
        return 2
    started = time.time()
    if prepared:
        announce(prepared, f" x {rank.world} processes (DDP)")
    interrupted = False
    try:
        distributed_worker(job, rank)
    except KeyboardInterrupt:
        interrupted = True
    code = finish(prepared, started, interrupted) if prepared else 0
    # Leave together: a rank that tears down gloo while another still talks to it can abort
    # ("terminate called without an active exception", seen in about 1 run in 5).
    dist.barrier()
    dist.destroy_process_group()
    return code


def announce(prepared: Prepared, processes: str = "") -> None:
    job, base = prepared.job, prepared.base
    warning = crowding_warning(job.storage, prepared.study, job.workers)
    print(f"study {job.study_name!r} in {redact(job.storage)}: {job.workers} worker(s){processes} x {job.threads} "
          f"thread(s), up to {job.n_trials} trials at a target of {base.epochs} epochs on "
          f"{base.data.train_fraction:.0%} of the train split, sampler {job.sampler}, pruner {job.pruner}"
          + (f"\n{warning}" if warning else ""), flush=True)


def finish(prepared: Prepared, started: float, interrupted: bool) -> int:
    job = prepared.job
    out = Path(prepared.results_dir) / job.study_name
    minutes = (time.time() - started) / 60
    record_session(prepared.study, "study", started)
    summary = summarise(prepared.study, prepared.base, job.space, out)
    print(f"{'stopped' if interrupted else 'done'} after {minutes:.1f} min: {summary['trials']} trials, "
          f"{summary['complete']} complete, {summary['pruned']} pruned, {summary['fail']} failed")
    if interrupted:
        print("run the same command again to resume the study", file=sys.stderr)
        return 130
    lines = next_steps(summary, out, job.storage, job.study_name, job.artifact_dir, len(job.objectives) > 1)
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
