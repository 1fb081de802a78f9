"""Benchmark: many workers on one study, some of them killed, and what each storage costs per trial.

1. **Faults.** ``--workers`` `python -m study run` processes (one worker each, as separate machines
   would run them) on one PostgreSQL study with short trials (a tiny synthetic image folder, ``--epochs``
   epochs each), and the same with ``--sqlite-workers`` on a SQLite file; a quarter (``--kill-share``) are
   SIGKILLed at random moments and started again. Checked from the storage afterwards: every lineage of
   trials (a trial and its retries) ended in exactly one finished trial (none lost, none duplicated), none
   is left RUNNING or WAITING, and every retry of a trial killed after its first checkpoint resumed from
   it. Also each worker's peak memory (its own ru_maxrss: every worker imports PyTorch, whose shared
   libraries each process counts in full).
2. **Storage cost.** The storage calls of a trial (ask with 4 parameters, a report and a pruning check
   per epoch, 3 user attributes, tell), no training, timed per trial with 1 process and with many at
   once: RDB on PostgreSQL and on SQLite, JournalStorage on a file and on Redis, and GrpcStorageProxy
   in front of PostgreSQL. SQLite runs at 2, 4, 8, 16 and 32 processes to find where errors start.

Usage: python bench/load.py [--workers 16] [--trials 48] [--storage postgresql://postgres@127.0.0.1:5432/test]
(writes results/bench/load.json)"""

from __future__ import annotations

import argparse
import json
import multiprocessing
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

from bench.common import free_port, start_python, write_result  # noqa: E402
from cifar.config import DataConfig, ModelConfig, TrainConfig  # noqa: E402
from cifar.runtime import describe_machine  # noqa: E402
from cifar.synthetic import CLASSES, make_image_folder  # noqa: E402

POSTGRES = os.environ.get("CIFAR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS, SQLITE_PROCESSES = "redis://127.0.0.1:6379", (2, 4, 8, 16, 32)


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


def check(trials: list[optuna.trial.FrozenTrial], runs: Path, killed: set[str]) -> dict:
    """Lost, duplicated, stuck trials; how retries started (a retry of a trial whose worker was not ``killed``
    came from a late heartbeat; a dead trial's retry that started over beside its checkpoint is a fault)."""
    groups = lineages(trials)
    ends = {k: [t for t in g if t.state in (TrialState.COMPLETE, TrialState.PRUNED)] for k, g in groups.items()}
    retries = [t for t in trials if t.system_attrs.get("retry_history")]
    resumed = [t for t in retries if t.user_attrs.get("resumed_from")]
    pid = {t.number: str(t.user_attrs.get("worker")).rpartition(":")[2] for t in trials}  # the process that ran it
    alive = [t for t in retries if pid[t.system_attrs["retry_history"][-1]] not in killed]  # predecessor's lived
    return {"trials": len(trials), "lineages": len(groups),
            "complete": sum(t.state == TrialState.COMPLETE for t in trials),
            "failed": sum(t.state == TrialState.FAIL for t in trials),
            "lost": sum(not e for e in ends.values()), "duplicated": sum(len(e) > 1 for e in ends.values()),
            "stuck": sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials),
            "retried": len(retries), "retried_while_alive": len(alive), "resumed_from_checkpoint": len(resumed),
            "started_over": len(retries) - len(resumed), "started_over_with_a_checkpoint": sum(
                (runs / f"trial-{t.system_attrs['retry_history'][-1]:04d}" / "last.pt").is_file()
                for t in retries if t not in resumed and t not in alive)}


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
        holding = {str(t.user_attrs.get("worker", "")).rpartition(":")[2]  # past its first epoch: a checkpoint
                   for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.intermediate_values}
        for i, when in list(kill_at.items()):
            if procs[i].poll() is not None:  # a worker that already finished is not killed
                del kill_at[i]
            elif time.monotonic() >= when and _child_pid(procs[i].pid) in holding:  # mid-trial, resumable
                del kill_at[i]
                pid = _child_pid(procs[i].pid)
                os.killpg(procs[i].pid, signal.SIGKILL)
                procs[i].wait()
                kills.append({"worker": i, "pid": pid, "at_s": round(time.monotonic() - started, 1)})
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
              **check(study.trials, work / "runs" / name, {k["pid"] for k in kills})}
    peaks = [round(json.loads(u.read_text())["ru_maxrss"] / 1024, 1) for u in work.glob("usage-*.json")]
    result["peak_rss_mb"] = {"max": max(peaks), "median": statistics.median(peaks), "workers_measured": len(peaks)}
    if not result["lost"]:  # a study that lost a trial stays in the database, to read why
        optuna.delete_study(study_name=name, storage=url)
    return result


def _child_pid(launcher: int) -> str:
    """The worker that a launcher (bench.common.start_python) forked ("" where there is none yet)."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children")
    return (children.read_text().split() or [""])[0] if children.exists() else ""




def open_storage(kind: str, address: str):
    from optuna.storages import GrpcStorageProxy, JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalRedisBackend

    from study.storage import make_storage

    if kind.startswith("rdb"):
        return make_storage(address, heartbeat_interval=30, grace_period=120)
    if kind == "journal-file":
        return JournalStorage(JournalFileBackend(address))
    if kind == "journal-redis":
        return JournalStorage(JournalRedisBackend(address))
    host, port = address.rsplit(":", 1)
    return GrpcStorageProxy(host=host, port=int(port))


def _cost_worker(kind: str, address: str, name: str, trials: int, epochs: int, gate, out) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=name, storage=open_storage(kind, address))
    seconds, errors, first_error = [], 0, ""
    gate.wait()
    for _ in range(trials):
        t0 = time.perf_counter()
        try:
            trial = study.ask()
            trial.suggest_categorical("optimizer", ["sgd1024", "adamw", "muon"])
            trial.suggest_float("lr_scale", 0.2, 5.0, log=True)
            trial.suggest_categorical("batch_size", [256, 512, 1024])
            trial.suggest_float("dropout", 0.0, 0.3)
            for epoch in range(1, epochs + 1):
                trial.report(0.5 + epoch / 100, epoch)
                trial.should_prune()
            for key in ("params", "flops", "run_dir"):
                trial.set_user_attr(key, 1)
            study.tell(trial, 0.5)
        except Exception as e:  # noqa: BLE001 (counted: where the storage starts to fail is the measurement)
            errors += 1
            first_error = first_error or f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        seconds.append(time.perf_counter() - t0)
    out.put((seconds, errors, first_error))


def storage_cost(kind: str, address: str, processes: int, trials: int, epochs: int) -> dict:
    name = f"cost-{kind}-{processes}-{os.getpid()}-{int(time.time() * 1000)}"
    optuna.create_study(study_name=name, storage=open_storage(kind, address), direction="maximize")
    ctx = multiprocessing.get_context("spawn")
    gate, out = ctx.Barrier(processes + 1), ctx.Queue()
    procs = [ctx.Process(target=_cost_worker, args=(kind, address, name, trials, epochs, gate, out))
             for _ in range(processes)]
    for p in procs:
        p.start()
    gate.wait()
    started = time.perf_counter()
    results = [out.get(timeout=1800) for _ in procs]
    wall = time.perf_counter() - started
    for p in procs:
        p.join()
    seconds = [s for r in results for s in r[0]]
    errors = sum(r[1] for r in results)
    return {"storage": kind, "processes": processes, "trials": len(seconds), "errors": errors,
            "first_error": next((r[2] for r in results if r[2]), ""),
            "seconds_per_trial_median": round(statistics.median(seconds), 4),
            "seconds_per_trial_p90": round(sorted(seconds)[int(0.9 * (len(seconds) - 1))], 4),
            "trials_per_second": round(len(seconds) / wall, 1)}


def _grpc_server(url: str, port: int) -> None:
    """The proxy as Optuna's docs ask: the RDB storage behind its cache (get_storage), a thread per client."""
    from concurrent.futures import ThreadPoolExecutor

    from optuna.storages import get_storage, run_grpc_proxy_server

    from study.storage import make_storage

    run_grpc_proxy_server(get_storage(make_storage(url, heartbeat_interval=30, grace_period=120)), host="127.0.0.1",
                          port=port, thread_pool=ThreadPoolExecutor(max_workers=64))


def costs(url: str, processes: int, trials: int, epochs: int, work: Path) -> list[dict]:
    port = free_port()
    server = multiprocessing.get_context("spawn").Process(target=_grpc_server, args=(url, port), daemon=True)
    server.start()
    time.sleep(3)
    kinds = {"rdb-postgresql": url, "rdb-sqlite": f"sqlite:///{work / 'cost.db'}", "journal-file": str(work / "j.log"),
             "journal-redis": REDIS, "grpc-postgresql": f"127.0.0.1:{port}"}
    rows = []
    try:
        for kind, address in kinds.items():  # one process, then many, side by side per storage
            for n in (1, processes) if kind != "rdb-sqlite" else (1, *SQLITE_PROCESSES):
                rows.append(storage_cost(kind, address, n, trials, epochs))
                print(rows[-1], flush=True)
    finally:
        server.terminate()
    return rows


def summarise(rows: list[dict], processes: int) -> dict:
    """Per storage: seconds per trial alone and with ``processes`` at once (and the ratio, the cost of
    sharing); for SQLite, the fewest processes at which errors start (None: none up to the most tried)."""
    per = {}
    for kind in dict.fromkeys(r["storage"] for r in rows):
        alone = next(r for r in rows if r["storage"] == kind and r["processes"] == 1)
        shared = next((r for r in rows if r["storage"] == kind and r["processes"] == processes), None)
        per[kind] = {"alone_s": alone["seconds_per_trial_median"],
                     "shared_s": shared and shared["seconds_per_trial_median"],
                     "shared_over_alone": shared and round(shared["seconds_per_trial_median"]
                                                           / alone["seconds_per_trial_median"], 2),
                     "errors_shared": shared and shared["errors"]}
    failing = [r["processes"] for r in rows if r["storage"] == "rdb-sqlite" and r["errors"]]
    tried = [r["processes"] for r in rows if r["storage"] == "rdb-sqlite"]
    return {"processes": processes, "storages": per, "sqlite_errors_from": min(failing, default=None),
            "sqlite_most_tried": max(tried, default=None)}


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
