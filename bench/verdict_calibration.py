"""Benchmark: the verdict's error rates, measured by simulating the whole procedure many times.

The report's procedure is run as it is, with simulated runs in place of training:
the race (``reports.race.race``) on validation, the plan from the race
(``reports.verdict.make_plan``: the margin and the spread it plans with), and the
sequential test comparison (``reports.verdict.compare``) on fresh seeds. Each
simulated run's accuracy is its config's true accuracy plus run-to-run noise drawn
from the committed per-seed results of the fast recipe at the target's epochs
(``results/bench/time_to_accuracy.json``, the ``noise`` group): validation and test
noise each with its own measured standard deviation. The two arms of a seed are
drawn independently, as the committed reports measured (pairing by seed did not
correlate them).

Scenarios: no difference anywhere (A/A: the baseline and every candidate equal), and
a best candidate that is truly better by +0.35, +0.6 and +1.0 points, the other
candidates by half of it and by nothing. For each: the share of replications that
end better, worse, equivalent and undecided (with 95% Wilson intervals), the race's
pick, and the expected seeds per decision. The targets: at most 5% better-or-worse
under A/A, and power (better) of at least 0.8 at +0.6 points with the CPU preset's budget.

Usage:
    python bench/verdict_calibration.py [--reps 10000] [--looks 6,8,10] [--race-rounds 3] [--epochs 3]
Writes results/bench/verdict_calibration.json, its sentences included; ``BLOCKS`` hands them to the docs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402
from statsmodels.stats.proportion import proportion_confint  # noqa: E402

from bench.common import read_result, write_result  # noqa: E402
from reports.race import RacePlan, race  # noqa: E402
from reports.verdict import compare, make_plan  # noqa: E402
from study.presets import NOISE_FILE, PRESETS, RACE_ALPHA, noise_runs  # noqa: E402
from study.sequential import OUTCOMES  # noqa: E402

GAINS = (0.0, 0.0035, 0.006, 0.010)  # the best candidate's true gain over the baseline (accuracy)
BASE_ACC = 0.81                       # the baseline's true accuracy (3 epochs of the fast recipe)


def measured_noise(epochs: int, source: Path = NOISE_FILE) -> dict:
    """One run's validation and test standard deviation over the fast recipe's seeds at ``epochs``."""
    runs = noise_runs(epochs, source)
    if len(runs) < 3:
        raise SystemExit(f"{source} has {len(runs)} seeds of fast-{epochs}ep; the noise needs 3 or more "
                         f"(python bench/time_to_accuracy.py --only noise)")
    val, test = [r["best_val_acc"] for r in runs], [r["test_acc"] for r in runs]
    tta = [r["test_acc_tta"] for r in runs]
    # Does test-time augmentation make one run's test accuracy less noisy? The variance ratio with its
    # 95% F interval (the same seeds, so the interval is rough: the two are not independent).
    ratio = statistics.variance(tta) / statistics.variance(test)
    df = len(runs) - 1
    f_low, f_high = stats.f.ppf([0.975, 0.025], df, df)
    return {"epochs": epochs, "seeds": sorted(r["seed"] for r in runs), "val_std": statistics.stdev(val),
            "test_std": statistics.stdev(test), "val_mean": statistics.mean(val), "test_mean": statistics.mean(test),
            "test_tta_std": statistics.stdev(tta), "tta_variance_ratio": ratio,
            "tta_variance_ratio_ci": [ratio / f_low, ratio / f_high],
            "machines": sorted({r["machine_before_run"]["cpu"] for r in runs})}


def simulate(gain: float, noise: dict, looks: tuple[int, ...], rounds: int, candidates: int, reps: int,
             seed: int) -> dict:
    """``reps`` replications of the whole procedure; the best candidate truly better by ``gain``."""
    rng = np.random.default_rng(seed)
    # The candidates' true gains: the best one, half of it, then none (a study's top few differ).
    gains = {"baseline": 0.0, **{f"candidate {i + 1}": gain * max(0.0, 1 - i / 2) for i in range(candidates)}}
    race_plan = RacePlan(seeds=tuple(range(1, rounds + 1)), min_rounds=min(2, rounds), alpha=RACE_ALPHA)
    counts = dict.fromkeys(OUTCOMES, 0)
    pairs, race_runs, picked_best, deltas, mdes = [], [], 0, [], []
    for _ in range(reps):
        def train_round(names, s):
            return {n: BASE_ACC + gains[n] + rng.normal(0, noise["val_std"]) for n in names}

        result = race(list(gains), train_round, race_plan)
        plan = make_plan(result, looks, noise=(noise["val_std"], "measured"))  # as a sized study's budget gives
        true_gain = gains[result.winner]

        def train_pair(s, g=true_gain):
            return (BASE_ACC + rng.normal(0, noise["test_std"]), BASE_ACC + g + rng.normal(0, noise["test_std"]))

        verdict = compare(plan, train_pair, effect_sizes=False)
        counts[verdict.outcome] += 1
        pairs.append(verdict.last.n)
        race_runs.append(sum(len(v) for v in result.val.values()))
        picked_best += result.winner == "candidate 1"
        deltas.append(plan.delta)
        mdes.append(plan.mde)

    def rate(k: int) -> dict:
        low, high = proportion_confint(k, reps, alpha=0.05, method="wilson")
        return {"rate": k / reps, "low": float(low), "high": float(high)}

    return {"gain_points": round(100 * gain, 3), "reps": reps, "candidate_gains_points": {
            n: round(100 * g, 3) for n, g in gains.items()},
            "outcomes": {o: rate(counts[o]) for o in OUTCOMES},
            "false_decision": rate(counts["better"] + counts["worse"]) if gain == 0 else None,
            "power": rate(counts["better"]) if gain > 0 else None,
            "mean_pairs": float(np.mean(pairs)), "mean_race_runs": float(np.mean(race_runs)),
            "mean_runs": float(np.mean(race_runs) + 2 * np.mean(pairs)),
            "race_picked_the_best": picked_best / reps,
            "mean_margin_points": 100 * float(np.mean(deltas)), "mean_planned_mde_points": 100 * float(np.mean(mdes))}


SPEEDS = (320.0, 440.0, 610.0)  # the fast recipe's training images/s on the 2-core machines seen so far
EVAL_RATIO = 2.84               # evaluation images/s per training image/s (the reference job: 1,438 / 506)
REFERENCE_SPEED = 440.0         # the machine class the targets name (the time-to-accuracy runs' AMD EPYC)


def tradeoff(epochs: tuple[int, ...] = (3, 4)) -> list[dict]:
    """The CPU preset's main job at each speed and target: trials, the report's runs, the comparison's
    seeds and their MDE at the noise measured for that target, and the minutes."""
    from cifar.config import TrainConfig, apply_overrides
    from study.budget import Throughput
    from study.presets import PRESETS, plan_job

    cpu, rows = PRESETS.get("cpu"), []
    base = TrainConfig.from_json(ROOT / "configs" / "fast.json")
    for e in epochs:
        for speed in SPEEDS:
            cfg = apply_overrides(base, {"epochs": e})
            _, b = plan_job(cpu, cfg, Throughput(speed, EVAL_RATIO * speed, "cpu"), sized_target=False)
            v = b["verdict"]
            rows.append({"images_per_s": speed, "target_epochs": e, "trials": b["n_trials"],
                         "race_runs": (v["candidates"] + 1) * v["race_rounds"],
                         "looks": v["looks"], "mde_points": round(100 * v["planned_mde"], 2),
                         "run_std_points": round(100 * v["run_std"], 3), "noise_from": v["run_std_source"],
                         "run_minutes": b["run_minutes"], "minutes": b["estimate_minutes"]})
    return rows


def summary_line(scenarios: list[dict], looks: tuple[int, ...], noise: dict) -> str:
    """The docs' sentence on the calibration, written where the results are made."""
    def pct(r: dict) -> str:
        return f"{100 * r['rate']:.1f}% [{100 * r['low']:.1f}, {100 * r['high']:.1f}]"

    aa = scenarios[0]
    powers = "; ".join(f"+{s['gain_points']:g} points: better {pct(s['power'])}, {s['mean_pairs']:.1f} pairs"
                       for s in scenarios[1:])
    return (f"over {aa['reps']:,} simulated jobs per scenario (the race of {len(aa['candidate_gains_points']) - 1} "
            f"candidates, then looks at {', '.join(map(str, looks))} pairs; one run's noise "
            f"{100 * noise['val_std']:.2f} points on validation and {100 * noise['test_std']:.2f} on test, from "
            f"{len(noise['seeds'])} seeds of the fast recipe at {noise['epochs']} epochs): with no difference "
            f"anywhere, better or worse in "
            f"{pct(aa['false_decision'])} of jobs, equivalent in {pct(aa['outcomes']['equivalent'])}, "
            f"{aa['mean_pairs']:.1f} pairs on average; {powers}. {tta_sentence(noise)}")


def tta_sentence(noise: dict) -> str:
    """Whether test-time augmentation measurably steadies one run's test accuracy."""
    low, high = noise["tta_variance_ratio_ci"]
    measured = ("steadies one run measurably" if high < 1 else "makes one run noisier" if low > 1
                else "does not measurably steady one run")
    return (f"Test-time augmentation {measured}: its test accuracy varies {100 * noise['test_tta_std']:.2f} points "
            f"against {100 * noise['test_std']:.2f} plain (variance ratio {noise['tta_variance_ratio']:.2f}, 95% "
            f"interval {low:.2f} to {high:.2f}); the verdict reads plain test accuracy; weight averaging was not "
            "measured")


def tradeoff_table(rows: list[dict]) -> str:
    head = ("| training images/s | target epochs | trials | race runs | comparison looks (pairs) | MDE at 80% "
            "(points) | minutes at most |\n|---|---|---|---|---|---|---|")
    return "\n".join([head, *(f"| {r['images_per_s']:.0f} | {r['target_epochs']} | {r['trials']} | {r['race_runs']} | "
                              f"{', '.join(map(str, r['looks']))} | {r['mde_points']:.2f} | {r['minutes']:.0f} |"
                              for r in rows)])


# The sentences the docs quote from this script's results files (bench/blocks.py places them).
BLOCKS = {"verdict_tradeoff": lambda: read_result("verdict_calibration")["tradeoff_table"],
          "verdict_calibration": lambda: read_result("verdict_calibration")["summary"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=10_000)
    p.add_argument("--looks", default=None, help="default: the CPU preset's looks on the reference machine class")
    p.add_argument("--race-rounds", type=int, default=None, help="default: the CPU preset's")
    p.add_argument("--candidates", type=int, default=None, help="default: the CPU preset's")
    p.add_argument("--epochs", type=int, default=3, help="the target whose measured noise is simulated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "results" / "bench" / "verdict_calibration.json"))
    args = p.parse_args(argv)
    rows = tradeoff()
    reference = next(r for r in rows if r["images_per_s"] == REFERENCE_SPEED and r["target_epochs"] == args.epochs)
    looks = tuple(int(x) for x in args.looks.split(",")) if args.looks else tuple(reference["looks"])
    noise = measured_noise(args.epochs)
    cpu = PRESETS.get("cpu")
    rounds, candidates = args.race_rounds or cpu.race_rounds, args.candidates or cpu.candidates
    started = time.time()
    scenarios = [simulate(g, noise, looks, rounds, candidates, args.reps, args.seed + i)
                 for i, g in enumerate(GAINS)]
    aa = scenarios[0]["false_decision"]["rate"]
    power = next(s for s in scenarios if s["gain_points"] == 0.6)["power"]["rate"]
    write_result({"written": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": round(time.time() - started, 1),
                  "noise": noise, "design": {"looks": list(looks), "race_rounds": rounds, "candidates": candidates,
                                             "race_alpha": RACE_ALPHA, "alpha": 0.05,
                                             "machine_class_images_per_s": REFERENCE_SPEED},
                  "targets": {"aa_false_decision_at_most_0.05": aa <= 0.05, "power_at_0.6_at_least_0.8": power >= 0.8},
                  "scenarios": scenarios, "tradeoff": rows, "tradeoff_table": tradeoff_table(rows),
                  "summary": summary_line(scenarios, looks, noise)}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
