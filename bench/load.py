"""Benchmark: many workers on one study, some of them killed, and what each storage costs per trial.

1. **Faults.** ``--workers`` `python -m study run` processes (one worker each, as separate machines
   would run them) on one PostgreSQL study with short trials (a tiny synthetic image folder, ``--epochs``
   epochs each), and the same with ``--sqlite-workers`` on a SQLite file; a quarter (``--kill-share``) are
   SIGKILLed at random moments and started again. Checked from the storage afterwards: every lineage of
   trials (a trial and its retries) ended in exactly one finished trial (none lost, none duplicated), none
   is left RUNNING or WAITING, and every retry of a trial killed after its first checkpoint resumed from
   it. Also each worker's peak memory (its own ru_maxrss: every worker imports PyTorch, whose shared
   libraries each process counts in full).
2. **Storage cost** (bench/storage_cost.py): the storage calls of a trial, no training, timed per trial
   with 1 process and with many at once on each storage Optuna offers; SQLite at 2 to 32 processes.

Usage: python bench/load.py [--workers 16] [--trials 48] [--storage postgresql://postgres@127.0.0.1:5432/test]
(writes results/bench/load.json; ``BLOCKS``: the sentences the docs quote from its faults parts)"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import read_result, start_python, write_result  # noqa: E402
from bench.storage_cost import costs, summarise  # noqa: E402
from cifar.config import DataConfig, ModelConfig, TrainConfig  # noqa: E402
from cifar.runtime import describe_machine  # noqa: E402
from cifar.synthetic import CLASSES, make_image_folder  # noqa: E402

POSTGRES = os.environ.get("CIFAR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def tiny_base(folder: Path, work: Path, epochs: int) -> Path:
    """A base config that trains in about a second on the synthetic folder (the tests' tiny model)."""
    cfg = TrainConfig(data=DataConfig(data_dir=str(folder), cache_dir=str(work / "cache"), val_size=24),
                      model=ModelConfig(widths=(8, 16), depth=1, stem_width=0, dropout=0.0, num_classes=len(CLASSES)),
                      epochs=epochs, batch_size=256, optimizer="sgd1024", lr=8.8, warmup_epochs=0.5,
                      eval_batch_size=64, device="cpu")
    path = work / "base.json"
    cfg.to_json(path)
    return path


def lineages(trials: list[optuna.trial.FrozenTrial]) -> dict[int, list[optuna.trial.FrozenTrial]]:
    """The trials grouped by the first trial of their retry chain (Optuna's ``retry_history``)."""
    groups: dict[int, list] = {}
    for t in trials:
        history = t.system_attrs.get("retry_history", [])
        groups.setdefault(history[0] if history else t.number, []).append(t)
    return groups


def check(trials: list[optuna.trial.FrozenTrial], runs: Path, killed: set[int]) -> dict:
    """Lost, duplicated, stuck trials; how retries started (a retry of a trial that no kill hit came from a
    late heartbeat; a killed trial's retry that started over beside its checkpoint is a fault); each lost
    lineage trial by trial, to read why."""
    groups = lineages(trials)
    ends = {k: [t for t in g if t.state in (TrialState.COMPLETE, TrialState.PRUNED)] for k, g in groups.items()}
    retries = [t for t in trials if t.system_attrs.get("retry_history")]
    resumed = [t for t in retries if t.user_attrs.get("resumed_from")]
    alive = [t for t in retries if t.system_attrs["retry_history"][-1] not in killed]  # no kill hit its predecessor
    return {"trials": len(trials), "lineages": len(groups),
            "complete": sum(t.state == TrialState.COMPLETE for t in trials),
            "failed": sum(t.state == TrialState.FAIL for t in trials),
            "lost": sum(not e for e in ends.values()), "duplicated": sum(len(e) > 1 for e in ends.values()),
            "stuck": sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials),
            "retried": len(retries), "retried_while_alive": len(alive), "resumed_from_checkpoint": len(resumed),
            "started_over": len(retries) - len(resumed), "started_over_with_a_checkpoint": sum(
                (runs / f"trial-{t.system_attrs['retry_history'][-1]:04d}" / "last.pt").is_file()
                for t in retries if t not in resumed and t not in alive),
            "lost_lineages": [[{"trial": t.number, "state": t.state.name, "killed": t.number in killed,
                                "worker": str(t.user_attrs.get("worker", "")).rpartition(":")[2],
                                "epochs": len(t.intermediate_values), "reason": t.user_attrs.get("fail_reason")}
                               for t in groups[k]] for k, e in ends.items() if not e]}


def faults(url: str, workers: int, trials: int, kill_share: float, epochs: int, seed: int, work: Path,
           kill_window: tuple[float, float] = (5.0, 40.0)) -> dict:
    """The study run by ``workers`` processes, ``kill_share`` of them killed once each (from a random second of
    ``kill_window`` on, past a trial's first epoch: its checkpoint written), restarted; what the storage holds."""
    folder = make_image_folder(work / "imgs", n_train=240, n_test=30)
    base = tiny_base(folder, work, epochs)
    name = f"load-{os.getpid()}-{int(time.time())}"
    command = ["-m", "study", "run", "--storage", url, "--study-name", name, "--config", str(base),
               "--preset", "smoke", "--target-epochs", str(epochs), "--n-trials", str(trials), "--workers", "1",
               "--pruner", "none", "--heartbeat-interval", "2", "--grace-period", "20",
               "--runs-dir", str(work / "runs"), "--out", str(work / "results"),
               "--artifact-dir", str(work / "artifacts")]
    rng, logs, started = random.Random(seed), work / "logs", time.monotonic()
    logs.mkdir()

    def start(i: int, attempt: int):
        return start_python(command, work / f"usage-{i}-{attempt}.json", logs / f"worker-{i}-{attempt}.log")

    procs = {0: start(0, 0)}  # the first creates the study (its baseline trial, its budget); then the rest
    while name not in optuna.get_all_study_names(url):
        if procs[0].poll() is not None:
            raise SystemExit(f"error: the first worker exited with {procs[0].returncode}: {logs}/worker-0-0.log")
        time.sleep(0.2)
    procs.update({i: start(i, 0) for i in range(1, workers)})
    study = optuna.load_study(study_name=name, storage=url)
    victims = rng.sample(range(workers), round(kill_share * workers))
    kill_at = {i: time.monotonic() + rng.uniform(*kill_window) for i in victims}
    kills = []
    while any(p.poll() is None for p in procs.values()) or kill_at:
        holding = held(study, past_first_epoch=True)
        for i, when in list(kill_at.items()):
            if procs[i].poll() is not None:  # a worker that already finished is not killed
                del kill_at[i]
            elif time.monotonic() >= when and _child_pid(procs[i].pid) in holding:  # mid-trial, resumable
                del kill_at[i]
                pid = _child_pid(procs[i].pid)
                os.killpg(procs[i].pid, signal.SIGKILL)
                procs[i].wait()
                kills.append({"worker": i, "pid": pid, "trial": held(study).get(pid),  # None: between trials
                              "at_s": round(time.monotonic() - started, 1)})
                time.sleep(1.0)
                procs[i] = start(i, 1)
        time.sleep(0.2)
    seconds, killed = time.monotonic() - started, {k["worker"] for k in kills}
    failed = {i: {"code": p.returncode, "last_line": (logs / f"worker-{i}-{int(i in killed)}.log").read_text()
                  .strip().splitlines()[-1:]} for i, p in procs.items() if p.returncode != 0}
    result = {"study": name, "workers": workers, "trials_requested": trials, "epochs": epochs, "kills": len(kills),
              "kill_times_s": kills, "seconds": round(seconds, 1), "exit_codes_nonzero": failed,
              "live_trials_failed_by_a_late_beat": sum(log.read_text().count("failed by another worker's heartbeat")
                                                       for log in logs.glob("*.log")),
              **check(study.trials, work / "runs" / name, {k["trial"] for k in kills})}
    peaks = [round(json.loads(u.read_text())["ru_maxrss"] / 1024, 1) for u in work.glob("usage-*.json")]
    result["peak_rss_mb"] = {"max": max(peaks), "median": statistics.median(peaks), "workers_measured": len(peaks)}
    if not result["lost"]:  # a study that lost a trial stays in the database, to read why
        optuna.delete_study(study_name=name, storage=url)
    return result


def held(study: optuna.Study, past_first_epoch: bool = False) -> dict[str, int]:
    """process id -> the number of the trial it runs (past its first epoch: its checkpoint written)."""
    return {str(t.user_attrs.get("worker", "")).rpartition(":")[2]: t.number
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.intermediate_values or not past_first_epoch}


def _child_pid(launcher: int) -> str:
    """The worker that a launcher (bench.common.start_python) forked ("" where there is none yet)."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children")
    return (children.read_text().split() or [""])[0] if children.exists() else ""


def faults_part(f: dict, where: str) -> str:
    """One storage's faults part of load.json in a sentence."""
    return (f"{f['workers']} `study run` processes on one {where} study of {f['trials_requested']} trials "
            f"({f['epochs']} epochs each on a tiny synthetic folder), {f['kills']} SIGKILLed past a trial's "
            f"first epoch and started again: {f['lost']} trials lost, {f['duplicated']} duplicated, "
            f"{f['stuck']} left running or waiting, {len(f['exit_codes_nonzero'])} workers stopped by an error; "
            f"{f['live_trials_failed_by_a_late_beat']} trials of live workers failed on a late heartbeat; "
            f"{f['retried']} retried ({f['retried_while_alive']} of them while their worker lived on), "
            f"{f['resumed_from_checkpoint']} resumed from the predecessor's checkpoint, "
            f"{f['started_over_with_a_checkpoint']} of a dead trial started over beside its checkpoint; "
            f"{f['seconds'] / 60:.1f} min; each worker's peak resident memory {f['peak_rss_mb']['median']:.0f} MB "
            f"(median; PyTorch's shared libraries counted in every process)")


def load_faults_line() -> str:
    """The faults parts of load.json, PostgreSQL's then SQLite's."""
    d = read_result("load")
    return (f"{faults_part(d['faults'], 'PostgreSQL')}; and {faults_part(d['faults-sqlite'], 'SQLite')}; "
            f"on a {d['machine']}")


# The sentences the docs quote from this script's results files (bench/blocks.py places them).
BLOCKS = {"load_faults_line": load_faults_line}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--storage", default=POSTGRES, help="the PostgreSQL database the study and the costs use")
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--trials", type=int, default=48, help="finished trials the faults part's study asks for")
    p.add_argument("--kill-share", type=float, default=0.25)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--cost-trials", type=int, default=20, help="trials per process, storage-cost part")
    p.add_argument("--sqlite-workers", type=int, default=4)
    p.add_argument("--parts", default="faults,faults-sqlite,cost")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "results" / "bench" / "load.json"))
    args = p.parse_args(argv)
    result: dict = {"machine": describe_machine(),
                    "command": "python bench/load.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sqlite = f"sqlite:///{work / 'faults-sqlite.db'}"  # the same load on one machine's file, fewer workers
        for part, url, n in (("faults", args.storage, args.workers), ("faults-sqlite", sqlite, args.sqlite_workers)):
            if part in args.parts.split(","):
                (work / part).mkdir()
                result[part] = faults(url, n, args.trials, args.kill_share, args.epochs, args.seed, work / part)
                print(part, result[part], flush=True)
        if "cost" in args.parts:
            (work / "cost").mkdir()
            result["cost"] = costs(args.storage, args.workers, args.cost_trials, args.epochs, work / "cost")
            result["cost_summary"] = summarise(result["cost"], args.workers)
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
