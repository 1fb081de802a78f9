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
Writes results/bench/verdict_calibration.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from statsmodels.stats.proportion import proportion_confint  # noqa: E402

from bench.common import write_result  # noqa: E402
from reports.race import RacePlan, race  # noqa: E402
from reports.verdict import compare, make_plan  # noqa: E402
from study.presets import LOOKS, RACE_ALPHA, RACE_ROUNDS, REPORT_CANDIDATES  # noqa: E402
from study.sequential import OUTCOMES  # noqa: E402

NOISE_FILE = ROOT / "results" / "bench" / "time_to_accuracy.json"
GAINS = (0.0, 0.0035, 0.006, 0.010)  # the best candidate's true gain over the baseline (accuracy)
BASE_ACC = 0.81                       # the baseline's true accuracy (3 epochs of the fast recipe)


def measured_noise(epochs: int, source: Path = NOISE_FILE) -> dict:
    """One run's validation and test standard deviation over the fast recipe's seeds at ``epochs``."""
    runs = [r for r in json.loads(source.read_text())["runs"]
            if r["name"] == f"fast-{epochs}ep" and not r["overrides"].keys() - {"epochs"}]
    if len(runs) < 3:
        raise SystemExit(f"{source} has {len(runs)} seeds of fast-{epochs}ep; the noise needs 3 or more "
                         f"(python bench/time_to_accuracy.py --only noise)")
    val, test = [r["best_val_acc"] for r in runs], [r["test_acc"] for r in runs]
    return {"epochs": epochs, "seeds": sorted(r["seed"] for r in runs), "val_std": statistics.stdev(val),
            "test_std": statistics.stdev(test), "val_mean": statistics.mean(val), "test_mean": statistics.mean(test),
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
        plan = make_plan(result, looks)
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=10_000)
    p.add_argument("--looks", default=",".join(map(str, LOOKS)))
    p.add_argument("--race-rounds", type=int, default=RACE_ROUNDS)
    p.add_argument("--candidates", type=int, default=REPORT_CANDIDATES)
    p.add_argument("--epochs", type=int, default=3, help="the target whose measured noise is simulated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "results" / "bench" / "verdict_calibration.json"))
    args = p.parse_args(argv)
    looks = tuple(int(x) for x in args.looks.split(","))
    noise = measured_noise(args.epochs)
    started = time.time()
    scenarios = [simulate(g, noise, looks, args.race_rounds, args.candidates, args.reps, args.seed + i)
                 for i, g in enumerate(GAINS)]
    aa = scenarios[0]["false_decision"]["rate"]
    power = next(s for s in scenarios if s["gain_points"] == 0.6)["power"]["rate"]
    write_result({"written": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": round(time.time() - started, 1),
                  "noise": noise, "design": {"looks": list(looks), "race_rounds": args.race_rounds,
                                             "candidates": args.candidates, "race_alpha": RACE_ALPHA, "alpha": 0.05},
                  "targets": {"aa_false_decision_at_most_0.05": aa <= 0.05, "power_at_0.6_at_least_0.8": power >= 0.8},
                  "scenarios": scenarios}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
