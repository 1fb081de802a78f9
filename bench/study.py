"""Benchmark: TPE + Hyperband against random sampling without pruning, at equal wall-clock budget.

Both arms run the same objective (the CPU preset's largest trial budget, 9
epochs on 15%, not sized to the machine, so runs on different machines compare;
same data and base config) for the same number of minutes, one after the other, each
in its own SQLite study. Reported per arm: best validation accuracy, trials
finished, epochs spent and mean epochs per trial; and for every trial the
overhead of storage and framework (trial duration minus training proper, plus
the time spent inside Optuna's report/should_prune calls) as a share of trial time.

Usage:
    CIFAR10_DIR=../shared/data/cifar10-jpeg python bench/study.py [--minutes 20]
Writes results/bench/study.json; ``BLOCKS``: the sentences the docs quote from it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import read_result, write_result  # noqa: E402
from cifar.config import TrainConfig, apply_overrides  # noqa: E402
from cifar.data import prepare_data  # noqa: E402
from study.objective import Objective  # noqa: E402
from study.presets import PRESETS  # noqa: E402
from study.pruning import make_pruner  # noqa: E402
from study.search_space import make_sampler, params_of  # noqa: E402
from study.storage import make_storage  # noqa: E402

ARMS = {"tpe_hyperband": ("tpe", "hyperband"), "random_no_pruning": ("random", "none")}


def run_arm(name: str, base: TrainConfig, data, minutes: float, seed: int, work: Path) -> dict:
    sampler, pruner = ARMS[name]
    storage = make_storage(f"sqlite:///{work / (name + '.db')}", heartbeat_interval=30, grace_period=120)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                sampler=make_sampler(sampler, seed), pruner=make_pruner(pruner, base.epochs))
    study.enqueue_trial(params_of(base))  # both arms start from the baseline, as `study run` does
    store = optuna.artifacts.FileSystemArtifactStore(str(work / f"{name}-artifacts"))
    (work / f"{name}-artifacts").mkdir()
    objective = Objective(base, data, work / name, store)  # the same objective `study run` uses
    start = time.perf_counter()
    study.optimize(objective, timeout=minutes * 60)
    wall = time.perf_counter() - start
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    epochs = [t.user_attrs.get("epochs_run", 0) for t in finished]
    overheads = []
    for t in finished:
        duration = t.duration.total_seconds()
        overhead = duration - t.user_attrs["train_call_seconds"] + t.user_attrs["pruning_seconds"]
        overheads.append(overhead / duration)
    return {
        "sampler": sampler, "pruner": pruner, "wall_seconds": wall,
        "best_val_acc": study.best_value, "best_params": study.best_params,
        "trials_finished": len(finished),
        "trials_pruned": sum(t.state == TrialState.PRUNED for t in finished),
        "epochs_spent": sum(epochs), "mean_epochs_per_trial": statistics.mean(epochs),
        "overhead_share_mean": statistics.mean(overheads), "overhead_share_max": max(overheads),
    }


def study_bench_table(name: str) -> str:
    """TPE + Hyperband against random sampling without pruning, against the targets (<name>.json)."""
    d = read_result(name)
    tpe, rnd = d["arms"]["tpe_hyperband"], d["arms"]["random_no_pruning"]
    gap, ratio = 100 * (tpe["best_val_acc"] - rnd["best_val_acc"]), d["ratio_mean_epochs_pruned_to_unpruned"]
    worst = max(tpe["overhead_share_max"], rnd["overhead_share_max"])
    return "\n".join([
        "| | TPE + Hyperband | random, no pruning | target |", "|---|---|---|---|",
        f"| best val_acc | {tpe['best_val_acc']:.4f} | {rnd['best_val_acc']:.4f} | TPE >= random: "
        f"{'met' if gap >= 0 else f'**missed by {-gap:.2f} points**'} (one run each) |",
        f"| trials finished (pruned) | {tpe['trials_finished']} ({tpe['trials_pruned']}) | "
        f"{rnd['trials_finished']} ({rnd['trials_pruned']}) | |",
        f"| epochs spent | {tpe['epochs_spent']} | {rnd['epochs_spent']} | |",
        f"| mean epochs per trial | {tpe['mean_epochs_per_trial']:.2f} | {rnd['mean_epochs_per_trial']:.3g} | "
        f"ratio **{ratio:.2f}**, target <= 0.5: {'met' if ratio <= 0.5 else '**missed**'} |",
        f"| overhead, share of trial time (mean / max) | {100 * tpe['overhead_share_mean']:.2f}% / "
        f"{100 * tpe['overhead_share_max']:.2f}% | {100 * rnd['overhead_share_mean']:.2f}% / "
        f"{100 * rnd['overhead_share_max']:.2f}% | < 2%: {'met' if worst < 0.02 else '**missed**'} |",
        "", f"Arms ran {tpe['wall_seconds'] / 60:.1f} and {rnd['wall_seconds'] / 60:.1f} min (`{d['command']}`).",
    ])


def study_bench_trials() -> str:
    """How many trials each arm of the CPU study benchmark finished (study.json)."""
    counts = sorted(a["trials_finished"] for a in read_result("study")["arms"].values())
    return f"{counts[0]} to {counts[-1]} trials"


def full_trial_minutes() -> str:
    """Minutes per unpruned trial in the CPU study benchmark (study.json, its random arm)."""
    arm = read_result("study")["arms"]["random_no_pruning"]
    return f"{arm['wall_seconds'] / arm['trials_finished'] / 60:.1f} minutes"


# The sentences the docs quote from this script's results files (bench/blocks.py places them).
BLOCKS = {"study_bench_cpu": lambda: study_bench_table("study"), "study_bench_trials": study_bench_trials,
          "study_bench_h200": lambda: study_bench_table("study-h200"), "full_trial_minutes": full_trial_minutes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "fast.json"))
    parser.add_argument("--minutes", type=float, default=20.0, help="wall-clock budget of each arm")
    parser.add_argument("--preset", default="cpu", choices=tuple(PRESETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "results" / "bench" / "study.json"))
    args = parser.parse_args()

    preset = PRESETS.get(args.preset)
    base = apply_overrides(TrainConfig.from_json(args.config), {"epochs": preset.target_epochs})
    data = prepare_data(base.data)
    work = ROOT / "runs" / "bench-study"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    arms = {}
    for name in ARMS:
        print(f"arm {name}: {args.minutes} min", flush=True)
        arms[name] = run_arm(name, base, data, args.minutes, args.seed, work)
        print(json.dumps(arms[name], indent=2), flush=True)
    a, b = arms["tpe_hyperband"], arms["random_no_pruning"]
    result = {
        "command": f"python bench/study.py --minutes {args.minutes} --preset {args.preset}",
        "budget_per_trial": {"target_epochs": base.epochs, "train_fraction": base.data.train_fraction},
        "arms": arms,
        "ratio_mean_epochs_pruned_to_unpruned": a["mean_epochs_per_trial"] / b["mean_epochs_per_trial"],
        "best_val_acc_difference": a["best_val_acc"] - b["best_val_acc"],
        "overhead_share_max_over_arms": max(a["overhead_share_max"], b["overhead_share_max"]),
    }
    write_result(result, args.out, detail="arms")


if __name__ == "__main__":
    main()
