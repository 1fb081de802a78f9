"""Benchmark: does a cheaper fidelity rank configs as the target does? (proxy transfer, measured)

Trains configs drawn from the study's search space (a seeded random sampler,
one seed each) and the baseline (3 seeds: the noise floor) at the target
budget, recording validation accuracy after every epoch; then, for each
cheaper fidelity, the rank correlation (Spearman, Kendall) with the target's
validation accuracy and the regret at the target of the fidelity's top pick.
The fidelities: each epoch of the target run (the pruner's rungs), with
``--subset`` the target's epochs on a third of the train split, and with
``--compressed`` complete shorter runs (the whole schedule in fewer epochs).
Beside the correlations over all configs, what a pruner really needs
(``reports.fidelity.transfer_among_the_best``): the correlation over the better
half at the target, with intervals, and whether a halving at each epoch would
have removed one of the target's best 3. The rung a study at this target may
prune from (``supported_rung``, the rule fixed before the measurement, 16
configs at least) is written to the results file, and the study reads it there
(``study.pruning.measured_first_rung``). Validation only: the test set is never
read here.

Each run is cached in its run folder and its record in the results file, so a
stopped benchmark continues where it stopped when run again (also in a later
session, from the committed results file).

    CIFAR10_DIR=../shared/data/cifar10-jpeg python bench/fidelity.py [--configs 15] [--target-epochs 3] \
        [--subset] [--compressed] [--out results/bench/fidelity-3ep.json]

Writes results/bench/fidelity.json after every run; ``BLOCKS``: the sentences the docs quote from it.
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

import optuna  # noqa: E402

from bench.common import read_result, write_result  # noqa: E402
from bench.time_to_accuracy import machine  # noqa: E402
from cifar.config import TrainConfig, apply_overrides  # noqa: E402
from cifar.data import prepare_data  # noqa: E402
from cifar.rundir import RunDir, run_dir_for  # noqa: E402
from cifar.train import train  # noqa: E402
from reports.fidelity import (  # noqa: E402
    first_rung_by_rule,
    rung_correlations,
    study_curves,
    supported_rung,
    transfer_among_the_best,
)
from study.presets import PRESETS  # noqa: E402
from study.search_space import params_of, suggest_config  # noqa: E402

SUBSET = 1 / 3  # the data-subset fidelity: this share of the train split, the target's epochs
MIN_CONFIGS = 16  # the fewest configs (the baseline's seed 0 included) from which a rung is accepted


def plan(base: TrainConfig, n_configs: int, space: str, subset: bool,
         compressed: bool = False) -> list[tuple[str, str, dict, TrainConfig]]:
    """(name, fidelity, trial params, config) of every run: the target runs first, the baseline's
    seeds among them, then the cheaper fidelity's."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = []
    for i in range(n_configs):
        trial = study.ask()
        cfg = suggest_config(trial, base, space)
        drawn.append((f"config-{i + 1:02d}", trial.params, cfg))
        study.tell(trial, 0.0)
    baseline = [(f"baseline-seed{s}", params_of(base, space), apply_overrides(base, {"seed": s})) for s in range(3)]
    runs = [(n, "target", p, c) for n, p, c in baseline[:1] + drawn[: n_configs // 2] + baseline[1:2]
            + drawn[n_configs // 2:] + baseline[2:]]
    if subset:
        runs += [(n, "subset", p, apply_overrides(c, {"train_fraction": SUBSET})) for n, p, c in baseline[:1] + drawn]
    if compressed:  # the whole schedule in fewer epochs: another cheap fidelity than the target's first epochs
        runs += [(n, f"compressed {e} epochs", p, apply_overrides(c, {"epochs": e}))
                 for e in range(1, base.epochs) for n, p, c in baseline[:1] + drawn]
    return runs


def run_dir(root: Path, name: str, cfg: TrainConfig) -> RunDir:
    """The run's folder: the report's cache key (config hash and seed), under the run's name."""
    return RunDir(run_dir_for(cfg, root / name))


def execute(name: str, fidelity: str, params: dict, cfg: TrainConfig, rd: RunDir, key: str,
            data_cache: dict) -> dict:
    if not rd.results.is_file():
        frac = cfg.data.train_fraction
        if frac not in data_cache:
            data_cache[frac] = prepare_data(cfg.data)
        data = data_cache[frac]
        data.lock_test("the fidelity benchmark selects on validation only")
        train(cfg, data, rd.path, resume=rd.last.is_file(), quiet=True)
    history, results = rd.read_history(), rd.read_results()
    return {"key": key, "name": name, "fidelity": fidelity, "params": params, "seed": cfg.seed,
            "status": results.status, "val_acc": {int(r["epoch"]): r["val_acc"] for r in history},
            "train_seconds": round(history[-1]["elapsed_seconds"], 1) if history else 0.0,
            "images_per_s": round(statistics.fmean(r["images_per_s"] for r in history), 1) if history else None,
            "train_fraction": cfg.data.train_fraction, "epochs": cfg.epochs}


def study_population(storage: str, name: str, target: int) -> dict:
    """The same measurement over a finished study's own trials at this target: the population a pruner
    really sees (the sampler's, concentrated on good configs). Its trials must all have run to the target
    (no pruning), else the survivors are a biased sample."""
    study = optuna.load_study(study_name=name, storage=storage)
    if study.user_attrs.get("budget", {}).get("target_epochs") != target:
        raise SystemExit(f"error: study {name!r} did not train at the {target}-epoch target")
    if any(t.state == optuna.trial.TrialState.PRUNED for t in study.trials):
        raise SystemExit(f"error: study {name!r} pruned trials: its survivors are no fair population")
    curves = {str(k): {**{f"epoch {e}": v for e, v in c.items() if e != target}, "target": c[target]}
              for k, c in study_curves(study.trials).items() if target in c}
    return {"study": name, "storage": storage, "trials": len(curves),
            "transfer_among_the_best": transfer_among_the_best(curves, "target")}


def verdict(rung: int | None, configs: int, alone: int | None, population: dict | None) -> str:
    """The rule's verdict in words: the rung, or why there is none."""
    if rung:
        return (f"epoch {rung}: the earliest that ranks all configs (Spearman >= 0.6) and the better half (>= 0) "
                "as the target does and whose halving keeps the target's best 3"
                + (" in the study's own trials too" if population else ""))
    if configs < MIN_CONFIGS:
        return f"no rung: {configs} configs measured, {MIN_CONFIGS} needed"
    if not alone or not population:
        return "no rung: no epoch ranks the configs that matter as the target does"
    found = "; ".join(f"{r['fidelity']} would remove trial(s) {' and '.join(r['best_removed'])} of its best 3"
                      if r["best_removed"] else f"{r['fidelity']} ranks them at Spearman {r['spearman']:.2f}, the "
                      f"better half at {r['top_half_spearman']:.2f}" for r in population["transfer_among_the_best"])
    return (f"no rung: epoch {alone} passes the rule over these configs, but not over the "
            f"{population['trials']} unpruned trials of study {population['study']} at this target: {found}")


def analyse(records: list[dict], target: int, population: dict | None = None) -> dict:
    """Rank correlations of every fidelity with the target, over the seed-0 configs that have both."""
    final = {r["name"]: r["val_acc"].get(target) for r in records if r["fidelity"] == "target"}
    curves = {}
    for name, at_target in final.items():
        if at_target is None or (name.startswith("baseline-seed") and name != "baseline-seed0"):
            continue
        curve = {f"epoch {e}": v for r in records if r["name"] == name and r["fidelity"] == "target"
                 for e, v in r["val_acc"].items() if e != target}
        sub = next((r for r in records if r["name"] == name and r["fidelity"] == "subset"), None)
        if sub and sub["val_acc"]:
            curve[f"subset {SUBSET:.2f}, {target} epochs"] = sub["val_acc"][max(sub["val_acc"])]
        curves[name] = {**curve, "target": at_target}
    for r in records:  # complete shorter runs: the whole schedule compressed into fewer epochs
        if r["fidelity"].startswith("compressed") and r["name"] in curves and r["val_acc"]:
            curves[r["name"]][r["fidelity"]] = r["val_acc"][max(r["val_acc"])]
    base = [v for n, v in final.items() if n.startswith("baseline-seed") and v is not None]
    rows = rung_correlations(curves, "target")
    transfer = transfer_among_the_best(curves, "target")
    both = [transfer] + ([population["transfer_among_the_best"]] if population else [])
    rung = supported_rung(*both) if len(curves) >= MIN_CONFIGS else None
    why = verdict(rung, len(curves), supported_rung(transfer), population)
    return {"configs": len(curves), "correlations": rows, "first_rung_by_rule": first_rung_by_rule(rows),
            "transfer_among_the_best": transfer, "study_population": population,
            "supported_rung": rung, "supported_rung_why": why,
            "noise_floor": {"baseline_val_acc": base, "std": statistics.stdev(base) if len(base) > 1 else None},
            "ranking_at_target": sorted(((v["target"], n) for n, v in curves.items()), reverse=True)}


def _num(x: float) -> str:
    """A correlation to 2 decimals; "n/a" where it is undefined (fewer than 3 configs, or ties)."""
    return "n/a" if x != x else f"{x:.2f}"


def _ci(pair: list) -> str:
    return "" if pair[0] != pair[0] else f" [{pair[0]:.2f}, {pair[1]:.2f}]"


def fidelity_table(name: str = "fidelity") -> str:
    """Each cheaper fidelity against the target: rank correlations over all configs and over the better half,
    with 95% intervals, whether a halving there keeps the target's best 3, the regret (<name>.json)."""
    d = read_result(name)
    target, floor = d["target_epochs"], d["noise_floor"]
    rows = ["| fidelity | configs | Spearman [95% CI] | Kendall | better half: Spearman [95% CI] | "
            "a halving there removes (of the best 3) | regret at the target (points) |",
            "|---|---|---|---|---|---|---|"]
    for r in d["transfer_among_the_best"]:
        rows.append(f"| {r['fidelity']} | {r['n']} | {_num(r['spearman'])}{_ci(r['spearman_ci'])} | "
                    f"{_num(r['kendall'])} | {_num(r['top_half_spearman'])}{_ci(r['top_half_ci'])} | "
                    f"{', '.join(r['best_removed']) or 'none'} | {100 * r['regret']:.2f} |")
    best, worst = d["ranking_at_target"][0], d["ranking_at_target"][-1]
    m, speeds = d["machine"], [r["images_per_s"] for r in d["runs"] if r.get("images_per_s")]
    spread = (f"{100 * floor['std']:.2f} points over {len(floor['baseline_val_acc'])} seeds"
              if floor["std"] is not None else "not measured yet (one seed so far)")
    progress = f"**In progress: {len(d['runs'])} of the {d['planned']} planned runs done.** " \
        if len(d["runs"]) < d["planned"] else ""
    rows += ["", progress + f"{d['configs'] - 1} configs and the baseline at the target ({target} epochs, "
             f"validation accuracy {100 * worst[0]:.2f}% to {100 * best[0]:.2f}%; one seed each, the baseline's "
             f"seed 0); the baseline's one-run standard deviation at the target (the noise floor): {spread}. "
             f"Machine: {m['cpu']}, {m['threads']} threads, the SmallCNN at "
             f"{m['baseline_images_per_s']:.0f} images/s when the benchmark started; its runs trained at "
             f"{min(speeds):.0f} to {max(speeds):.0f} images/s (several sessions, machines and loads); written "
             f"{d['written']}. The rule's verdict: {d['supported_rung_why']}."]
    return "\n".join(rows)


def fidelity_line() -> str:
    """The README's sentence on which epochs may prune (fidelity.json)."""
    d = read_result("fidelity")
    corr = ", ".join(f"{r['fidelity']} {_num(r['spearman'])}" for r in d["correlations"])
    best = "; ".join(
        f"{r['fidelity']} {_num(r['top_half_spearman'])}"
        + (f", its halving would remove {' and '.join(r['best_removed'])}" if r["best_removed"] else "")
        for r in d["transfer_among_the_best"])
    return (f"over {d['configs'] - 1} configs and the baseline trained to the {d['target_epochs']}-epoch target, "
            f"each epoch's Spearman correlation with the target is {corr}; but among the better half "
            f"({d['transfer_among_the_best'][0]['top_half_n']} configs) it is {best} (of the target's best 3). "
            f"The rule's verdict: {d['supported_rung_why']}")


def fidelity_population(name: str = "fidelity-3ep") -> str:
    """The rule over a finished study's own trials (<name>.json's ``study_population``, the study read
    through Optuna), and where the target's best trial stood at each epoch."""
    d = read_result(name)
    pop, target = d["study_population"], d["target_epochs"]
    curves = study_curves(optuna.load_study(study_name=pop["study"], storage=pop["storage"]).trials)
    best = max(curves, key=lambda k: curves[k][target])
    ranks = "; ".join(
        f"{sorted(curves, key=lambda k: -curves[k][e]).index(best) + 1} of {len(curves)} at epoch {e} "
        f"({100 * curves[best][e]:.2f}% against {100 * max(c[e] for c in curves.values()):.2f}% for its leader)"
        for e in range(1, target))
    return (f"{d['supported_rung_why']}. The target's best, trial {best} "
            f"({100 * curves[best][target]:.2f}% at epoch {target}), ranked {ranks}")


# The sentences the docs quote from this script's results files (bench/blocks.py places them).
BLOCKS = {"fidelity_table": fidelity_table, "fidelity_3ep_table": lambda: fidelity_table("fidelity-3ep"),
          "fidelity_line": fidelity_line, "fidelity_3ep_population": fidelity_population}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "fast.json"), help="the baseline")
    parser.add_argument("--target-epochs", type=int, default=PRESETS.get("cpu").target_epochs)
    parser.add_argument("--configs", type=int, default=MIN_CONFIGS - 1,
                        help="configs drawn from the search space (with the baseline: 16, the fewest the study's "
                             "rung rule accepts)")
    parser.add_argument("--space", default="default")
    parser.add_argument("--subset", action="store_true", help="also the data-subset fidelity")
    parser.add_argument("--compressed", action="store_true",
                        help="also complete shorter runs (the whole schedule in 1 .. target-1 epochs)")
    parser.add_argument("--study", nargs=2, metavar=("STORAGE", "NAME"), default=None,
                        help="also a finished, unpruned study at this target: the rung must pass there too")
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench" / "fidelity"))
    parser.add_argument("--out", default=str(ROOT / "results" / "bench" / "fidelity.json"))
    args = parser.parse_args(argv)
    base = apply_overrides(TrainConfig.from_json(args.config), {"epochs": args.target_epochs})
    out = Path(args.out)
    # Records of earlier sessions, from the results file (JSON keys are strings: epochs back to ints).
    known = {r["key"]: {**r, "val_acc": {int(e): v for e, v in r["val_acc"].items()}}
             for r in json.loads(out.read_text())["runs"]} if out.is_file() else {}
    runs = plan(base, args.configs, args.space, args.subset, args.compressed)
    population = study_population(*args.study, args.target_epochs) if args.study else None
    data_cache: dict = {}
    records = []
    measured = json.loads(out.read_text()).get("machine") if out.is_file() else None
    for i, (name, fidelity, params, cfg) in enumerate(runs, 1):
        rd = run_dir(Path(args.runs_dir), name, cfg)
        key = f"{rd.path.parent.name}/{rd.path.name}"
        print(f"[{i}/{len(runs)}] {name} ({fidelity}){' cached' if key in known else ''}", flush=True)
        if key not in known:
            measured = measured or machine()  # the machine that trains, measured before its first run
        records.append(known.get(key) or execute(name, fidelity, params, cfg, rd, key, data_cache))
        known[key] = records[-1]
        write_result({"command": "python bench/fidelity.py " + " ".join(argv or sys.argv[1:]),
                      "target_epochs": args.target_epochs, "planned": len(runs), "machine": measured,
                      "written": time.strftime("%Y-%m-%d %H:%M:%S"), **analyse(records, args.target_epochs, population),
                      "runs": records}, out, detail="runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
