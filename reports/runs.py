"""The report's runs: train the candidates and the baseline at the target, select on validation, then test.

The order is the point. ``ensure_trained`` trains every (config, seed) with the
test set locked (``CifarData.lock_test``); ``select`` picks the winner by mean
validation accuracy; only then ``ensure_tested`` reads the test set, for the
baseline and the best candidate, and records when. Seed 0 of a config whose
study trial ran to the target is that trial's run (copied into the cache), so
the report does not train it again. Runs are cached by config and seed under
``runs/reports/``: a report stopped part-way continues where it stopped. A run
whose small files (config, history, results) are there but whose checkpoint is
not (trained on another machine, copied without its weights) counts as trained
for selection, and is trained again only if the test needs its weights.

This half of the report needs only PyTorch and Optuna (no plotly, no browser),
so the runs can be trained on one machine, for instance one with a GPU
(``python -m reports build --runs-only``), and the report built on another.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from cifar.config import TrainConfig, apply_overrides, flatten
from cifar.data import CifarData
from cifar.evaluate import evaluate_run
from cifar.optim import identity
from cifar.rundir import RunDir
from cifar.train import train
from reports.stats import mean_std
from study.storage import UsageError

DATA_LOCATION = ("data_dir", "cache_dir")  # where the data is, not what a run trains on


def run_dir_for(cfg: TrainConfig, runs_root: Path) -> Path:
    key = hashlib.sha1(json.dumps(identity(cfg), sort_keys=True).encode()).hexdigest()[:12]
    return runs_root / f"{key}-seed{cfg.seed}"


def same_run(a: TrainConfig, b: TrainConfig) -> bool:
    """Whether two configs train the same run, wherever their data lies."""
    fa, fb = flatten(a), flatten(b)
    return all(fa[k] == fb[k] for k in fa if k not in DATA_LOCATION)


def finished(run_dir: Path, cfg: TrainConfig) -> bool:
    """A run directory that trained ``cfg`` to its last epoch."""
    run = RunDir(run_dir)
    if not (run.results.is_file() and run.config.is_file()) or not same_run(run.read_config(), cfg):
        return False
    return run.read_results().epochs_run == cfg.epochs


def ensure_trained(configs: dict[str, TrainConfig], seeds: int, runs_root: Path, data: CifarData,
                   reuse: dict[str, str | None] | None = None) -> dict[str, list[Path]]:
    """Every (config, seed) trained, the test set untouched; print progress and ETA.

    ``reuse``: name -> a study trial's run directory, taken as that config's seed-0 run when it
    trained the same config to its last epoch."""
    plan = [(name, apply_overrides(cfg, {"seed": s})) for name, cfg in configs.items() for s in range(seeds)]
    out: dict[str, list[Path]] = {name: [] for name in configs}
    todo = []
    for name, cfg in plan:
        path = run_dir_for(cfg, runs_root)
        trial_dir = (reuse or {}).get(name) if cfg.seed == 0 else None
        done = finished(path, cfg)
        if not done and trial_dir and finished(Path(trial_dir), cfg):
            shutil.copytree(trial_dir, path, dirs_exist_ok=True)
            print(f"{name} seed 0: the study's run {trial_dir}", flush=True)
            done = True
        if not done:
            todo.append((name, cfg, path))
        out[name].append(path)
    started = time.time()
    for i, (name, cfg, path) in enumerate(todo):
        eta = f", ETA {(time.time() - started) / i * (len(todo) - i) / 60:.0f} min" if i else ""
        resume = RunDir(path).last.is_file()  # a run stopped part-way continues from its last epoch
        print(f"[{i + 1}/{len(todo)}] {'resuming' if resume else 'training'} {name} seed {cfg.seed} "
              f"({cfg.epochs} epochs{eta})", flush=True)
        result = train(cfg, data, path, resume=resume)
        if result.status == "diverged":
            raise UsageError(f"{name} seed {cfg.seed} diverged in {path}: {result.message}")
    if not todo:
        print(f"all {len(plan)} runs trained in {runs_root}", flush=True)
    return out


@dataclass(frozen=True)
class Selection:
    val: dict[str, list[float]]   # name -> best validation accuracy of each seed
    best: str                     # the candidate with the highest mean
    winner: str                   # best if it beats the baseline's mean, else "baseline"
    done_at: float                # time.time() when the selection was made

    def mean_std(self, name: str) -> tuple[float, float]:
        return mean_std(self.val[name])


def select(dirs: dict[str, list[Path]]) -> Selection:
    """The winner by mean validation accuracy over the seeds (ties keep the baseline)."""
    val = {name: [RunDir(p).read_results().best_val_acc for p in paths] for name, paths in dirs.items()}
    means = {name: mean_std(v)[0] for name, v in val.items()}
    candidates = [n for n in dirs if n != "baseline"]
    best = max(candidates, key=lambda n: means[n]) if candidates else "baseline"
    winner = best if means[best] > means["baseline"] else "baseline"
    return Selection(val, best, winner, time.time())


def ensure_tested(dirs: dict[str, list[Path]], names: list[str], data: CifarData) -> list[dict]:
    """Evaluate the named configs' runs on the test set (where not done yet); what was read, and when."""
    reads = []
    for name in names:
        todo = [p for p in dirs[name] if not RunDir(p).predictions.is_file()]
        retrained = [p for p in todo if not RunDir(p).best.is_file()]
        for p in todo:
            if p in retrained:
                # Trained on another machine: its small files travelled (selection used them), its
                # weights did not. The same config and seed again; the test needs weights.
                print(f"{name}: {p} has no checkpoint here; training it again to test it", flush=True)
                train(RunDir(p).read_config(), data, p, quiet=True)
            evaluate_run(p, data=data)
        reads.append({"config": name, "runs": [str(p) for p in dirs[name]], "evaluated_now": len(todo),
                      "retrained_for_test": len(retrained), "at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return reads
