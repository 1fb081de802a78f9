"""The report's retrained runs: which configs, at which budget, cached by config and seed.

This half of the report needs only PyTorch and Optuna (no plotly, no browser),
so the runs can be trained on one machine, for instance one with a GPU, and the
report built from the cached runs on another: ``python -m reports build
--runs-only`` there, then copy ``runs/reports/`` back and build.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import optuna

from cifar.config import TrainConfig, apply_overrides
from cifar.data import CifarData, prepare_data
from cifar.evaluate import evaluate_run
from cifar.train import train
from reports.load import configs_of
from study.presets import at_report_budget
from study.storage import UsageError


def run_dir_for(cfg: TrainConfig, runs_root: Path) -> Path:
    key = hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    return runs_root / f"{key}-seed{cfg.seed}"


def ensure_runs(configs: dict[str, TrainConfig], seeds: int, runs_root: Path,
                data: CifarData | None = None) -> dict[str, list[Path]]:
    """Train and evaluate every (config, seed) not already in the cache; print progress and ETA.

    ``data``: the configs' data, where the caller holds it already (loaded here only if needed)."""
    plan = [(name, apply_overrides(cfg, {"seed": s})) for name, cfg in configs.items() for s in range(seeds)]
    todo = [(n, c) for n, c in plan if not (run_dir_for(c, runs_root) / "test_predictions.pt").is_file()]
    if todo and data is None:
        data = prepare_data(next(iter(configs.values())).data)
    started = time.time()
    for i, (name, cfg) in enumerate(todo):
        eta = f", ETA {(time.time() - started) / i * (len(todo) - i) / 60:.0f} min" if i else ""
        print(f"[{i + 1}/{len(todo)}] training {name} seed {cfg.seed} ({cfg.epochs} epochs{eta})", flush=True)
        run_dir = run_dir_for(cfg, runs_root)
        result = train(cfg, data, run_dir)
        if result.status == "diverged":
            raise UsageError(f"{name} seed {cfg.seed} diverged in {run_dir}: {result.message}")
        evaluate_run(run_dir, data=data)
    if not todo:
        print(f"all {len(plan)} runs cached in {runs_root}", flush=True)
    out: dict[str, list[Path]] = {name: [] for name in configs}
    for name, cfg in plan:
        out[name].append(run_dir_for(cfg, runs_root))
    return out


def report_configs(study: optuna.Study, epochs: int | None, seeds: int) -> tuple[dict[str, TrainConfig], dict]:
    """The baseline and tuned configs at the report's budget, and what the report says about them."""
    baseline, tuned, baseline_trial, best_trial = configs_of(study)
    # Sized from the baseline (the runs of both configs share the report's minutes).
    epochs = at_report_budget(baseline, study.user_attrs, epochs, seeds).epochs
    configs = {name: at_report_budget(cfg, study.user_attrs, epochs, seeds)
               for name, cfg in (("baseline", baseline), ("tuned", tuned))}
    return configs, {"epochs": epochs, "baseline_trial": baseline_trial, "best_trial": best_trial}
