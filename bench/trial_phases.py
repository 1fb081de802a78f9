"""Benchmark: where a study trial's time outside its epochs goes, phase by phase.

Runs a short study (``python -m study run``, its own process, a throwaway
storage) on a small share of the train split, so that a trial's fixed costs
weigh against short epochs as they do on a GPU, then reads what each trial
recorded (``phase_seconds``, study/objective.py): the medians over its finished
trials of the time before ``train()``, inside ``train()`` around the epochs, in
Optuna's report and prune calls, and on the curve PNG and its upload; what is
left of a trial's time is Optuna's own, outside the objective. The first
trial's figures are kept apart (it pays for what a process does once).

Usage:
    CIFAR10_DIR=../shared/data/cifar10-jpeg python bench/trial_phases.py [--trials 10]
        [--preset smoke] [--train-fraction 0.02] [--target-epochs 4]
Writes results/bench/trial_phases.json; ``BLOCKS``: the sentences the docs quote from it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402
import torch  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from bench.common import read_result, run_python, write_result  # noqa: E402
from cifar.runtime import device_name  # noqa: E402


def phases(trial: optuna.trial.FrozenTrial) -> dict[str, float]:
    """A trial's seconds outside its epochs, by phase, Optuna's own outside the objective included."""
    out = dict(trial.user_attrs["phase_seconds"])
    outside = trial.duration.total_seconds() - trial.user_attrs["train_seconds"]
    out["optuna_outside_objective"] = outside - sum(out.values())
    out["outside_epochs"] = outside
    return out


def trial_phases_line() -> str:
    """Where a short study's trials spend their time outside the epochs (trial_phases.json)."""
    d = read_result("trial_phases")
    m, first = d["median_seconds"], d["first_trial_seconds"]
    return (f"on a {d['threads']}-thread {d['machine']}, a `{d['preset']}` study of {d['trials_finished']} trials on "
            f"{100 * d['train_fraction']:.0f}% of the split at a {d['target_epochs']}-epoch target (a trial "
            f"{d['trial_seconds_median']:.1f} s, its epochs {d['epochs_seconds_median']:.1f} s; medians): "
            f"{m['outside_epochs']:.3f} s a trial outside its epochs, of which {m['before_train']:.3f} s before "
            f"`train()`, {m['train_setup_and_callbacks']:.3f} s in `train()` around the epochs, "
            f"{m['optuna_report_prune']:.3f} s in Optuna's report and prune calls, {m['curve_and_uploads']:.3f} s "
            f"on the curve and its upload, {m['optuna_outside_objective']:.3f} s in Optuna outside the objective; "
            f"the first trial {first['outside_epochs']:.2f} s, {first['before_train']:.2f} s of it before `train()`")


# The sentences the docs quote from this script's results files (bench/blocks.py places them).
BLOCKS = {"trial_phases_line": trial_phases_line}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--train-fraction", type=float, default=0.02)
    parser.add_argument("--target-epochs", type=int, default=4)
    parser.add_argument("--out", default=str(ROOT / "results" / "bench" / "trial_phases.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        storage = f"sqlite:///{Path(tmp) / 'study.db'}"
        run_python(["-m", "study", "run", "--preset", args.preset, "--storage", storage, "--study-name", "phases",
                    "--set", f"data.train_fraction={args.train_fraction}", "--target-epochs", str(args.target_epochs),
                    "--n-trials", str(args.trials), "--runs-dir", str(Path(tmp) / "runs"),
                    "--out", str(Path(tmp) / "results")], quiet=True)
        study = optuna.load_study(study_name="phases", storage=storage)
        finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    first, later = phases(finished[0]), [phases(t) for t in finished[1:]]
    result = {
        "command": "python bench/trial_phases.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": device_name(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
        "threads": torch.get_num_threads(),
        "preset": args.preset, "train_fraction": args.train_fraction, "target_epochs": args.target_epochs,
        "trials_finished": len(finished),
        "trial_seconds_median": round(statistics.median(t.duration.total_seconds() for t in finished[1:]), 3),
        "epochs_seconds_median": round(statistics.median(t.user_attrs["train_seconds"] for t in finished[1:]), 3),
        "median_seconds": {k: round(statistics.median(p[k] for p in later), 3) for k in first},
        "first_trial_seconds": {k: round(v, 3) for k, v in first.items()},
    }
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
