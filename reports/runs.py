"""The report's runs: a race on validation with the test set sealed, then the test comparison in rounds.

The order is the point. ``run_race`` trains the baseline and the candidates on
fresh seeds, round by round, inside ``cifar.seal.sealed`` (no code in the process
can read the test set), and picks the winner on validation (``reports.race``);
the caller records the selection and the plan in the study, and only then
``run_comparison`` trains the baseline and the winner on the comparison's own
fresh seeds, reads their test accuracy (``ensure_tested``) and stops at the first
look that decides (``reports.verdict``). Runs are cached by config and seed under
``runs/reports/``: a report stopped part-way replays the same race and looks from
the cache and continues where it stopped. A run whose small files (config,
history, results) are there but whose checkpoint is not (trained on another
machine, copied without its weights) counts as trained for selection, and is
trained again only if the test needs its weights.

This half of the report needs only PyTorch and Optuna (no plotly, no browser),
so the runs can be trained on one machine, for instance one with a GPU
(``python -m reports build --runs-only``), and the report built on another.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

from cifar.cli import UsageError
from cifar.config import TrainConfig, apply_overrides
from cifar.data import CifarData
from cifar.evaluate import evaluate_run
from cifar.rundir import RunDir, finished, run_dir_for
from cifar.train import train
from cifar.tta import REPORTED
from reports.race import RacePlan, RaceResult, race
from reports.verdict import Plan, Verdict, compare


def ensure_trained(configs: dict[str, TrainConfig], seeds: Sequence[int], runs_root: Path,
                   data: CifarData) -> dict[str, list[Path]]:
    """Every (config, seed) trained (cached by config and seed), the test set untouched; print
    progress and ETA. Returns name -> the run directory of each seed, in ``seeds``' order."""
    plan = [(name, apply_overrides(cfg, {"seed": s})) for name, cfg in configs.items() for s in seeds]
    out: dict[str, list[Path]] = {name: [] for name in configs}
    todo = []
    for name, cfg in plan:
        path = run_dir_for(cfg, runs_root)
        if not finished(path, cfg):
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
    return out


def val_acc(run_dir: Path) -> float:
    """The validation accuracy a run is selected by (its best epoch's, as the study's trials are)."""
    return RunDir(run_dir).read_results().best_val_acc


def tested_at(run_dir: Path, tta: int) -> bool:
    """Whether the run's test metrics are there, with TTA of level ``tta`` measured (any level for 0)."""
    run = RunDir(run_dir)
    return run.predictions.is_file() and run.test_metrics.is_file() and (
        tta == 0 or not math.isnan(run.read_test_metrics().acc_at(tta)))


def test_acc_at(run_dir: Path, tta: int) -> float:
    """A tested run's test accuracy as it predicts at TTA level ``tta``."""
    return RunDir(run_dir).read_test_metrics().acc_at(tta)


def ensure_tested(dirs: dict[str, list[Path]], names: list[str], data: CifarData,
                  tta: dict[str, int] | None = None) -> list[dict]:
    """Evaluate the named configs' runs on the test set (where not done yet), plain and with TTA (of
    the level in ``tta``, by name; else ``REPORTED``, beside plain); what was read, and when."""
    reads = []
    for name in names:
        level = (tta or {}).get(name, 0)
        todo = [p for p in dirs[name] if not tested_at(p, level or REPORTED)]
        retrained = [p for p in todo if not RunDir(p).best.is_file()]
        for p in todo:
            if p in retrained:
                # Trained on another machine: its small files travelled (selection used them), its
                # weights did not. The same config and seed again; the test needs weights.
                print(f"{name}: {p} has no checkpoint here; training it again to test it", flush=True)
                train(RunDir(p).read_config(), data, p, quiet=True)
            evaluate_run(p, data=data, tta=level or REPORTED)
        reads.append({"config": name, "runs": [str(p) for p in dirs[name]], "evaluated_now": len(todo),
                      "retrained_for_test": len(retrained), "at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return reads


def run_race(configs: dict[str, TrainConfig], plan: RacePlan, runs_root: Path, data: CifarData) -> RaceResult:
    """The race of ``configs`` (the baseline first) on validation, each round's runs trained here."""
    def train_round(names: list[str], seed: int) -> dict[str, float]:
        print(f"race, seed {seed}: {', '.join(names)}", flush=True)
        dirs = ensure_trained({n: configs[n] for n in names}, [seed], runs_root, data)
        return {n: val_acc(d[0]) for n, d in dirs.items()}

    return race(list(configs), train_round, plan)


def run_comparison(baseline: TrainConfig, tuned: TrainConfig, plan: Plan, runs_root: Path, data: CifarData,
                   tta: dict[str, int] | None = None) -> tuple[Verdict, dict[str, list[Path]], list[dict]]:
    """The test comparison of ``plan``: seeds in rounds up to each look until one decides, each arm's
    accuracy as it predicts (``tta``: its TTA level, by arm name; none by default). Returns the
    verdict, the runs of both arms (seed order) and the test reads (what was read, and when)."""
    configs = {"baseline": baseline, "tuned": tuned}
    dirs: dict[str, list[Path]] = {"baseline": [], "tuned": []}
    reads: list[dict] = []

    def train_pair(seed: int) -> tuple[float, float]:
        got = ensure_trained(configs, [seed], runs_root, data)
        reads.extend(ensure_tested(got, ["baseline", "tuned"], data, tta))
        for name in configs:
            dirs[name] += got[name]
        return tuple(test_acc_at(got[name][0], (tta or {}).get(name, 0)) for name in configs)

    return compare(plan, train_pair), dirs, reads
