"""The storage part of bench/load.py: what each storage costs per trial, alone and shared.

The storage calls of a trial (ask with 4 parameters, a report and a pruning check per epoch, 3 user
attributes, tell), no training, timed per trial with 1 process and with many at once: RDB on
PostgreSQL and on SQLite, JournalStorage on a file and on Redis, and GrpcStorageProxy in front of
PostgreSQL. SQLite runs at 2, 4, 8, 16 and 32 processes to find where errors start. ``BLOCKS``: the
docs' table of load.json's cost part."""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from pathlib import Path

import optuna

from bench.common import free_port, read_result

REDIS, SQLITE_PROCESSES = "redis://127.0.0.1:6379", (2, 4, 8, 16, 32)
STORAGE_USE = {"rdb-postgresql": "many workers, many machines (the default for a shared study)",
               "rdb-sqlite": "one machine, a few workers (the default: a file, nothing to run)",
               "journal-file": "one machine, no database (a file of operations; NFS needs care)",
               "journal-redis": "several machines where Redis runs and PostgreSQL does not",
               "grpc-postgresql": "very many workers: one proxy process holds the database connections"}


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


def storage_cost_table() -> str:
    """Each storage's seconds per trial and trials per second, alone and shared, and where SQLite's errors
    start (load.json's cost part)."""
    d = read_result("load")
    c, n = d["cost_summary"], d["cost_summary"]["processes"]
    rate = {(r["storage"], r["processes"]): r["trials_per_second"] for r in d["cost"]}
    rows = [f"| storage | use it for | s per trial, 1 process | s per trial, {n} at once | trials/s, 1 process | "
            f"trials/s, {n} at once | errors at {n} |", "|---|---|---|---|---|---|---|"]
    for kind, r in c["storages"].items():
        rows.append(f"| {kind} | {STORAGE_USE[kind]} | {r['alone_s']:.3f} | {r['shared_s']:.3f} | "
                    f"{rate[kind, 1]:.1f} | {rate[kind, n]:.1f} | {r['errors_shared']} |")
    by_n = "; ".join(f"{r['processes']}: {r['errors']} errors, {r['seconds_per_trial_median']:.2f} s per trial"
                     for r in d["cost"] if r["storage"] == "rdb-sqlite")
    start = (f"errors start at {c['sqlite_errors_from']} processes" if c["sqlite_errors_from"] else
             f"no errors up to {c['sqlite_most_tried']} processes (each waits up to 120 s for the write lock)")
    rows += ["", f"A trial's storage calls without training (ask with 4 parameters, a report and a pruning check "
             f"per epoch, 3 user attributes, tell), the median over every trial of every process, on a "
             f"{d['machine']}: {n} processes share its cores, so a shared figure holds the CPU's share too. "
             f"SQLite by processes ({by_n}): {start}."]
    return "\n".join(rows)


# The sentences the docs quote from load.json's cost part (bench/blocks.py places them).
BLOCKS = {"storage_cost_table": storage_cost_table}
