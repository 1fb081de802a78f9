"""Pareto pruning against none, measured: two studies of validation accuracy against ONNX latency over the
cost space on the same sampler seed, one pruned by cost (``--pruner pareto``, study.pruning.ParetoHalving),
one not (``--pruner none``), each trial to the same target.

Every architecture's latency (stage widths x depth x block x TTA level) is measured first, on the quiet
machine, into the latency cache that both studies read (cifar.latency.cached_cost): equal architectures
cost the same in both, and no latency is measured while a study trains. The studies then run side by
side, each pinned to its own CPU (taskset), so both see the same machine for the whole run.

Recorded (results/bench/pareto_pruning.json): the trial-epochs each study spent (the saving: 1 - pruned /
unpruned), each front's hypervolume up to one common reference corner (the lowest val_acc and the highest
latency of both studies' complete trials) and their ratio, the non-dominated trials of each and the
latency span of each front, the minutes each took, and the machine (its processor, and the training
images/s its trials measured). The comparison is paired: both samplers start from one seed, and TPE puts a
pruned trial among its worse trials (as it would a complete one that ends dominated), so the two searches
draw the same points for as long as pruning removes only trials that would end dominated; where it prunes
one that would not, they part.

Resumable: the same command continues both studies (their trials are in their storages) and rewrites the
result. Measured over each study's first ``--n-trials`` trials that count (``upto``): a study that a second
worker joined may have finished one more. ``--continue-from NAME --name LONGER --n-trials N``: a longer
measurement that starts from copies of a shorter one's studies (their trials; not its report's records),
so the shorter one stays as it was.
The pruned study is the committed reference study of accuracy against latency too; its Pareto report is
``python -m reports build``. ``BLOCKS``: the docs' sentence and table of each measurement.

Usage:
    CIFAR10_DIR=../shared/data/cifar10-jpeg python bench/pareto_pruning.py --n-trials 16 --target-epochs 4 \\
        --train-fraction 0.25
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, ROOT, write_result  # noqa: E402
from cifar.config import TrainConfig, apply_overrides  # noqa: E402
from cifar.data import prepare_data  # noqa: E402
from cifar.latency import cached_cost, machine  # noqa: E402
from reports.pareto import front, hypervolume, points_of, worst_corner  # noqa: E402
from study.objectives import add_variants  # noqa: E402
from study.pruning import COST_PRUNERS  # noqa: E402
from study.search_space import SPACES  # noqa: E402
from study.workers import counted  # noqa: E402

ARMS = ("pruned", "unpruned")  # the studies' name suffixes
ARCHITECTURE = ("stage_widths", "depth", "block", "tta")


def premeasure(base: TrainConfig, cache: Path) -> dict[str, float]:
    """Every architecture of the cost space timed into ``cache`` (those already there are read back)."""
    params = {p.name: p for p in SPACES.get("cost") if p.name in ARCHITECTURE}
    seconds, measured = time.perf_counter(), 0
    every = list(itertools.product(*(params[n].choices for n in ARCHITECTURE)))
    for values in every:
        v = dict(zip(ARCHITECTURE, values))
        cfg = apply_overrides(base, {"widths": v["stage_widths"], "depth": v["depth"], "block": v["block"]})
        measured += not cached_cost(cfg, v["tta"], cache)["cached"]
    return {"architectures": len(every), "measured_now": measured, "seconds": round(time.perf_counter() - seconds, 1)}


REPORT_ATTRS = ("selection", "verdict_plan", "first_test_read", "sessions")  # a report's, not the search's


def continue_from(source: str, name: str, storage_dir: Path, arms: tuple[str, ...] = ARMS) -> None:
    """Each arm's study ``name`` made, where missing, as a copy of the search of arm ``source`` (its trials and
    the study's settings, not a report's records): a longer measurement that continues a shorter one."""
    for arm in arms:
        to = f"sqlite:///{storage_dir / name}-{arm}.db"
        if f"{name}-{arm}" in optuna.get_all_study_names(to):
            continue
        old = optuna.load_study(study_name=f"{source}-{arm}", storage=f"sqlite:///{storage_dir / source}-{arm}.db")
        new = optuna.create_study(study_name=f"{name}-{arm}", storage=to, directions=old.directions)
        new.set_metric_names(old.metric_names)
        for key, value in old.user_attrs.items():
            if key not in REPORT_ATTRS:
                new.set_user_attr(key, value)
        new.add_trials(old.get_trials(deepcopy=False))


def run_arms(args, storage_dir: Path, runs: Path) -> dict[str, float]:
    """Both studies side by side, study i on CPU i; their minutes (of this invocation)."""
    procs, began = {}, time.perf_counter()
    for cpu, (pruner, arm) in enumerate(zip((args.pruner, "none"), ARMS)):
        name = f"{args.name}-{arm}"
        cmd = ["taskset", "-c", str(cpu % (os.cpu_count() or 1)), sys.executable, "-m", "study", "run",
               "--preset", "smoke", "--study-name", name, "--storage", f"sqlite:///{storage_dir / name}.db",
               "--objectives", "val_acc,latency", "--space", "cost", "--pruner", pruner, "--seed", str(args.seed),
               "--n-trials", str(args.n_trials), "--target-epochs", str(args.target_epochs),
               "--set", f"train_fraction={args.train_fraction}", "--runs-dir", str(runs),
               "--out", str(storage_dir)]
        log = open(storage_dir / f"{name}.log", "a")  # noqa: SIM115 (closed with the process)
        procs[arm] = (subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT), log)
    minutes = {}
    for arm, (proc, log) in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"the {arm} study stopped with exit {proc.returncode}: see {log.name}")
        log.close()
        minutes[arm] = round((time.perf_counter() - began) / 60, 1)
    return minutes


def upto(study: optuna.Study, n_trials: int) -> list[optuna.trial.FrozenTrial]:
    """The study's trials up to its ``n_trials``-th that counts (study.workers.counted, by number): the
    measurement's, where two workers finished one more."""
    trials = study.get_trials(deepcopy=False)
    last = sorted(t.number for t in counted(trials))[:n_trials][-1:]
    return [t for t in trials if not last or t.number <= last[0]]


def summary(study: optuna.Study, trials: list[optuna.trial.FrozenTrial]) -> dict:
    """Trials, trial-epochs and the front of the study's deployable models (its trials at every TTA level)."""
    states = [t.state.name.lower() for t in trials]
    points = front(points_of(study, trials))
    images = sum(t.user_attrs.get("epochs_run", 0) for t in trials)
    seconds = sum(t.user_attrs.get("train_seconds", 0.0) for t in trials)
    cfg = TrainConfig.from_dict(study.user_attrs["base_config"])
    per_epoch = (50_000 - cfg.data.val_size) * cfg.data.train_fraction
    return {"trials": len(trials), **{s: states.count(s) for s in ("complete", "pruned", "fail")},
            "trial_epochs": sum(t.user_attrs.get("epochs_run", 0) for t in trials if t.state.is_finished()),
            "front": [{"trial": p.number, "tta": p.tta, "val_acc": p.values[0], "latency_ms": p.values[1]}
                      for p in points],
            "non_dominated": len(points), "front_trials": len({p.number for p in points}),
            "latency_span": points[-1].values[1] / points[0].values[1] if points else None,
            "train_images_per_s": round(images * per_epoch / seconds, 1) if seconds else None}


def pareto_pruning_table() -> str:
    """A sentence and a table per measurement (results/bench/pareto_pruning*.json), fewest trials first."""
    found = sorted((json.loads(f.read_text()) for f in RESULTS.glob("pareto_pruning*.json")),
                   key=lambda d: d["setting"]["n_trials"])
    return "\n\n".join(measurement_text(d) for d in found)


def measurement_text(d: dict) -> str:
    st, m = d["setting"], d["machine"]
    rows = ["| study | trials (complete / pruned) | trial-epochs | non-dominated models (trials) | latency span "
            "of the front | hypervolume |", "|---|---|---|---|---|---|"]
    for arm, a in d["arms"].items():
        rows.append(f"| {arm} | {a['trials']} ({a['complete']} / {a['pruned']}) | {a['trial_epochs']} | "
                    f"{a['non_dominated']} ({a['front_trials']}) | {a['latency_span']:.1f}x | {a['hypervolume']:.4f} |")
    return "\n".join([
        f"{st['n_trials']} trials each over the cost space" + (f" (copies of {st['continues']}'s studies run on: "
                                                              "their first trials are the ones above)"
                                                              if st.get("continues") else "") +
        f", sampler seed {st['sampler_seed']}, a {st['target_epochs']}-"
        f"epoch target on {st['train_fraction']:.0%} of the train split, side by side on a {m['cpus']}-CPU "
        f"{m['cpu']} (one CPU each; {m['train_images_per_s_pruned_study']:.0f} training images/s per trial "
        f"there): pruning by cost (`--pruner {st.get('pruner', 'pareto')}`"
        + (f"; the unpruned arm {st['unpruned_from']}'s" if st.get("unpruned_from") else "") +
        f") saved **{d['epochs_saved']:.0%} of the trial-epochs** (target 40%), its front's "
        f"hypervolume **{d['hypervolume_ratio']:.1%} of the unpruned one's** (target 98% at least), both up to "
        f"the corner (val_acc {d['reference_corner']['val_acc']:.4f}, {d['reference_corner']['latency_ms']:.3g} "
        "ms).", "", *rows])


BLOCKS = {"pareto_pruning_table": pareto_pruning_table}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-trials", type=int, default=16)
    p.add_argument("--target-epochs", type=int, default=4)
    p.add_argument("--train-fraction", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="cifar-cpu-pareto4")
    p.add_argument("--studies", default=str(ROOT / "results" / "reference" / "studies"))
    p.add_argument("--runs-dir", default=str(ROOT / "results" / "reference" / "runs" / "studies"))
    p.add_argument("--continue-from", default=None, metavar="NAME",
                   help="make the studies, where missing, as copies of NAME's (its trials), then run them on")
    p.add_argument("--pruner", default="pareto", choices=tuple(COST_PRUNERS), help="the pruned arm's rule")
    p.add_argument("--reuse-unpruned", default=None, metavar="NAME",
                   help="the unpruned arm: a copy of NAME's (the same seed draws the same trials unpruned)")
    p.add_argument("--out", default=str(RESULTS / "pareto_pruning.json"))
    args = p.parse_args(argv)
    storage_dir, runs = Path(args.studies), Path(args.runs_dir)
    storage_dir.mkdir(parents=True, exist_ok=True)
    if args.continue_from:
        continue_from(args.continue_from, args.name, storage_dir)
    if args.reuse_unpruned:
        continue_from(args.reuse_unpruned, args.name, storage_dir, ("unpruned",))
    base = TrainConfig.from_dict(json.loads((ROOT / "configs" / "fast.json").read_text()))
    latency = premeasure(base, runs / "latency")
    print(f"latency: {latency}", flush=True)
    minutes = run_arms(args, storage_dir, runs)
    studies = {arm: optuna.load_study(study_name=f"{args.name}-{arm}",
                                      storage=f"sqlite:///{storage_dir / args.name}-{arm}.db") for arm in ARMS}
    for s in studies.values():  # trials that ran before trials recorded their TTA variants: measured now
        cfg = TrainConfig.from_dict(s.user_attrs["base_config"])
        add_variants(s, cfg, lambda cfg=cfg: prepare_data(cfg.data))
    trials = {arm: upto(s, args.n_trials) for arm, s in studies.items()}
    arms = {arm: summary(s, trials[arm]) for arm, s in studies.items()}
    corner = worst_corner([p for arm, s in studies.items() for p in points_of(s, trials[arm])])
    for arm in studies:
        arms[arm]["hypervolume"] = hypervolume([(f["val_acc"], f["latency_ms"]) for f in arms[arm]["front"]], corner)
        arms[arm]["minutes_this_invocation"] = minutes[arm]
    pruned, unpruned = arms["pruned"], arms["unpruned"]
    result = {
        "what": __doc__.split("\n\n")[0].replace("\n", " ").replace("--pruner pareto`", f"--pruner {args.pruner}`"),
        "machine": {**machine(), "train_images_per_s_pruned_study": pruned["train_images_per_s"]},
        "setting": {"n_trials": args.n_trials, "target_epochs": args.target_epochs,
                    "train_fraction": args.train_fraction, "sampler_seed": args.seed, "space": "cost",
                    "studies": [f"{args.name}-{a}" for a in ARMS], "continues": args.continue_from,
                    "pruner": args.pruner, "unpruned_from": args.reuse_unpruned},
        "latency_cache": latency, "reference_corner": {"val_acc": corner[0], "latency_ms": corner[1]},
        "epochs_saved": 1 - pruned["trial_epochs"] / unpruned["trial_epochs"],
        "hypervolume_ratio": pruned["hypervolume"] / unpruned["hypervolume"],
        "targets": {"epochs_saved_at_least": 0.40, "hypervolume_within": 0.02, "non_dominated_at_least": 5,
                    "latency_span_at_least": 4.0},
        "arms": arms}
    result["targets_met"] = {
        "epochs_saved": result["epochs_saved"] >= 0.40,
        "hypervolume": result["hypervolume_ratio"] >= 0.98,
        "non_dominated": pruned["non_dominated"] >= 5,
        "latency_span": (pruned["latency_span"] or 0) >= 4.0}
    result["counting"] = ("the front is of deployable models: each complete trial at its own TTA level and at the "
                          "others (the same weights; study.objectives.tta_variants); front_trials counts the trials "
                          "behind them")
    write_result(result, args.out, detail="arms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
