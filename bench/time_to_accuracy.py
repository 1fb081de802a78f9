"""Benchmark: test accuracy against training compute and time, for the fast recipe and the baseline.

Trains every run of the plan below with ``python -m cifar.train`` and evaluates it
with ``python -m cifar.evaluate --tta 2`` (test accuracy plain and with
mirror + translate test-time augmentation), each in its own process so its peak
memory is its own. Runs are cached in ``runs/bench/tta/``: a stopped benchmark
continues where it stopped when run again (an interrupted run resumes from its
``last.pt``). Finished runs are also read back from the committed results file, so a later
session (a fresh machine, without ``runs/``) runs only what is missing.
Before every run it measures the machine in the same process
(fp32 matmul GFLOP/s, and training images/s of the SmallCNN), so every
timing names the speed of the machine it was taken on.

Groups of the plan (run in this order; ``--only`` picks some):
- recipe:   configs/fast.json at complete schedules of 10, 5, 6, 4 and 2 epochs, seeds 0 and 1
- wide:     the same recipe with widths 64,256,256 (airbench94's) at 10 epochs, seeds 0 and 1
- baseline: configs/smallcnn.json (14 epochs), seeds 0 and 1
- ablation: the recipe at 6 epochs with each technique removed in turn, seed 0
- noise:    configs/fast.json at 3 and 4 epochs, seeds 0-7: the seed-to-seed spread the verdict's
            power is planned from (fast-4ep seeds 0 and 1 are the recipe group's)
- muon:     configs/fast-muon.json (Muon for the conv filters) at 11 epochs, plain and wide, seeds 0 and 1;
            configs/fast.json at the same 11 epochs, seeds 0 and 1

Training compute = 3 x forward FLOPs x images trained. The test set is read only
to report these figures; no choice in the recipe is made from them here.

Usage:
    CIFAR10_DIR=../shared/data/cifar10-jpeg python bench/time_to_accuracy.py \
        [--only recipe,fast-wide-10ep] [--seeds 0] [--list]
Writes results/bench/time_to_accuracy.json after every run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import matmul_gflops, run_python, write_result  # noqa: E402
from cifar.config import TrainConfig, apply_overrides  # noqa: E402
from cifar.rundir import RunDir, run_key  # noqa: E402
from cifar.runtime import device_name, resolve_device  # noqa: E402
from study.budget import measure_throughput  # noqa: E402

FAST, SMALLCNN = ROOT / "configs" / "fast.json", ROOT / "configs" / "smallcnn.json"
FAST_MUON = ROOT / "configs" / "fast-muon.json"
# Each technique of the recipe, and the overrides that remove it (at 6 epochs).
ABLATIONS = {
    "whitening": {"stem": "conv", "stem_width": 24},
    "gelu": {"activation": "relu"},
    "bn_without_scale": {"bn_scale": True},
    "bias_lr_scale": {"bias_lr_scale": 1.0},
    "dirac_init": {"dirac_init": False},
    "whiten_bias_freeze": {"whiten_bias_epochs": 0},
    "lookahead": {"lookahead": False},
    "alternating_flip": {"alternating_flip": False},
    "translate": {"crop_padding": 0},
    "label_smoothing": {"label_smoothing": 0.0},
    "triangle_schedule": {"schedule": "onecycle", "warmup_epochs": 1.38},  # 23% of 6 epochs, then to zero
}
TARGETS = [  # (what, PFLOP at most, accuracy at least, with TTA)
    ("88.0% without TTA within 0.16 PFLOP", 0.16, 0.880, False),
    ("90.5% with TTA within 0.36 PFLOP", 0.36, 0.905, True),
    ("85.0% without TTA within 0.08 PFLOP", 0.08, 0.850, False),
]


@dataclass(frozen=True)
class Run:
    group: str
    name: str
    config: Path
    overrides: dict = field(default_factory=dict)
    seed: int = 0

    def cfg(self) -> TrainConfig:
        return apply_overrides(TrainConfig.from_json(self.config), {**self.overrides, "seed": self.seed})

    def run_dir(self, root: Path) -> RunDir:
        key = run_key(self.cfg())[:10]
        return RunDir(root / f"{self.name}-{key}-seed{self.seed}")


def plan(common: dict | None = None) -> list[Run]:
    """Every run of the benchmark; ``common``: overrides for all of them (``--set``, e.g. amp=bf16 on a GPU)."""
    c = common or {}
    # The targets' budgets first (10 epochs: 0.16 PFLOP; 5: 0.08), both seeds, then the other schedules.
    runs = [Run("recipe", f"fast-{e}ep", FAST, {**c, "epochs": e}, s) for e in (10, 5, 6, 4, 2) for s in (0, 1)]
    runs += [Run("wide", "fast-wide-10ep", FAST, {**c, "epochs": 10, "widths": "64,256,256"}, s) for s in (0, 1)]
    runs += [Run("baseline", "smallcnn-14ep", SMALLCNN, dict(c), s) for s in (0, 1)]
    runs += [Run("ablation", f"fast-6ep-no-{t}", FAST, {**c, "epochs": 6, **o}, 0) for t, o in ABLATIONS.items()]
    # Muon for the filters (airbench94_muon's values), at the budgets of the two open targets: 11 epochs.
    runs += [Run("muon", "fast-muon-11ep", FAST_MUON, dict(c), s) for s in (0, 1)]
    runs += [Run("muon", "fast-wide-muon-11ep", FAST_MUON, {**c, "widths": "64,256,256"}, s) for s in (0, 1)]
    # The recipe's own optimizer at the same 11 epochs: what Muon adds beyond the eleventh epoch.
    runs += [Run("muon", "fast-11ep", FAST, {**c, "epochs": 11}, s) for s in (0, 1)]
    # The recipe with low_memory (same arithmetic, less kept for the backward pass): a whole run's peak.
    runs += [Run("memory", "fast-10ep-low-memory", FAST, {**c, "epochs": 10, "low_memory": True}, 0)]
    # The one-run noise at the CPU preset's targets (3 and 4 epochs): what the verdict's seeds must beat.
    runs += [Run("noise", f"fast-{e}ep", FAST, {**c, "epochs": e}, s) for e in (3, 4) for s in range(8)
             if (e, s) not in ((4, 0), (4, 1))]
    return runs


def run_process(args: list[str]) -> float:
    """Run ``python ARGS`` to its end; its peak resident memory in MB (fails loudly if it fails)."""
    return run_python(args).ru_maxrss / 1024


def machine() -> dict:
    """This machine's speed right now: the CPU's fp32 matmul, and the SmallCNN's training
    images/s on the device the runs train on (the GPU, where there is one)."""
    base = TrainConfig.from_json(SMALLCNN)
    measured = {"cpu": device_name(torch.device("cpu")), "threads": torch.get_num_threads(),
                "matmul_gflops": round(matmul_gflops(2048, 10), 1),
                "baseline_images_per_s": round(measure_throughput(base, seconds=4.0).train, 1)}
    device = resolve_device(base.device)
    return {**measured, "gpu": device_name(device)} if device.type == "cuda" else measured


def execute(run: Run, root: Path, known: dict[str, dict]) -> dict:
    """Train (or resume) and evaluate one run unless its record exists (``known``: the records of
    the committed results file, from earlier sessions; or the run folder's own); its record."""
    rd = run.run_dir(root)
    if rd.path.name in known:
        return known[rd.path.name]
    record_file = rd.path / "bench_record.json"
    if record_file.is_file():
        return json.loads(record_file.read_text())
    measured = machine()
    cfg = run.cfg()
    rd.path.mkdir(parents=True, exist_ok=True)
    train_peak = 0.0
    if not rd.results.is_file():
        if rd.last.is_file():
            cmd = ["-m", "cifar.train", "--resume", str(rd.path)]
        else:
            cfg.to_json(rd.path / "bench_config.json")
            cmd = ["-m", "cifar.train", "--config", str(rd.path / "bench_config.json"), "--out", str(rd.path)]
        train_peak = run_process(cmd)
    eval_peak = run_process(["-m", "cifar.evaluate", str(rd.path), "--tta", "2"])
    results, test, history = rd.read_results(), rd.read_test_metrics(), rd.read_history()
    provenance = rd.read_provenance()
    n_train = provenance["data_sizes"]["train"]
    steps = n_train // cfg.batch_size if n_train > cfg.batch_size else -(-n_train // cfg.batch_size)
    images = results.epochs_run * min(n_train, steps * cfg.batch_size)
    images_per_s = statistics.mean(r["images_per_s"] for r in history)
    record = {
        "key": rd.path.name, "group": run.group, "name": run.name, "seed": run.seed, "overrides": run.overrides,
        "device": provenance["device_name"] or provenance["device"], "amp": cfg.amp,
        "run_dir": str(rd.path.relative_to(ROOT)) if rd.path.is_relative_to(ROOT) else str(rd.path),
        "epochs": results.epochs_run, "train_images": n_train, "batch_size": cfg.batch_size,
        "test_acc": test.test_acc, "test_acc_tta": test.test_acc_tta, "best_val_acc": results.best_val_acc,
        "train_seconds": round(sum(r["epoch_seconds"] for r in history), 1),
        "images_per_s": round(images_per_s, 1), "mflops_per_image": round(results.flops / 1e6, 2),
        "train_pflop": round(3 * results.flops * images / 1e15, 4),
        "train_gflops_per_s": round(3 * results.flops * images_per_s / 1e9, 1),
        "peak_rss_mb": round(max(train_peak, eval_peak), 0) if train_peak else None,
        "train_peak_rss_mb": round(train_peak) if train_peak else None, "eval_peak_rss_mb": round(eval_peak),
        "machine_before_run": measured,
    }
    record_file.write_text(json.dumps(record, indent=2) + "\n")
    return record


def summarise(records: list[dict]) -> list[dict]:
    """Mean and std over seeds, per configuration."""
    rows = []
    for name in dict.fromkeys(r["name"] for r in records):
        rs = [r for r in records if r["name"] == name]

        def ms(key: str, rs: list[dict] = rs) -> tuple[float, float | None]:
            values = [r[key] for r in rs]
            return round(statistics.mean(values), 4), round(statistics.stdev(values), 4) if len(values) > 1 else None

        rows.append({
            "name": name, "group": rs[0]["group"], "seeds": [r["seed"] for r in rs], "epochs": rs[0]["epochs"],
            "devices": sorted({r.get("device") or "cpu" for r in rs}),
            "cpus": sorted({r["machine_before_run"]["cpu"] for r in rs}),
            "test_acc": ms("test_acc"), "test_acc_tta": ms("test_acc_tta"), "train_minutes": round(
                statistics.mean(r["train_seconds"] for r in rs) / 60, 1),
            "images_per_s": ms("images_per_s")[0], "train_pflop": rs[0]["train_pflop"],
            "train_gflops_per_s": ms("train_gflops_per_s")[0],
            "matmul_gflops": round(statistics.mean(r["machine_before_run"]["matmul_gflops"] for r in rs), 1),
            "baseline_images_per_s": round(statistics.mean(
                r["machine_before_run"]["baseline_images_per_s"] for r in rs), 1),
            "peak_rss_mb": max((r["peak_rss_mb"] or 0) for r in rs) or None,
        })
    return rows


def targets(rows: list[dict]) -> list[dict]:
    """Each target: the best configuration meeting it (mean of >= 2 seeds), or why none does."""
    out = []
    for what, pflop, acc, tta in TARGETS:
        key = "test_acc_tta" if tta else "test_acc"
        eligible = [r for r in rows if r["group"] in ("recipe", "wide", "muon") and len(r["seeds"]) >= 2
                    and r["train_pflop"] <= pflop]
        best = max(eligible, key=lambda r: r[key][0], default=None)
        out.append({"target": what, "met": bool(best and best[key][0] >= acc),
                    "best": {"name": best["name"], key: best[key], "train_pflop": best["train_pflop"]}
                    if best else "no configuration within the budget has 2 seeds yet"})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=None,
                        help="comma-separated groups (recipe, wide, baseline, ablation, muon, memory, noise) "
                             "or run names (fast-10ep)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds to run (default: the plan's)")
    parser.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench" / "tta"))
    parser.add_argument("--out", default=str(ROOT / "results" / "bench" / "time_to_accuracy.json"))
    parser.add_argument("--list", action="store_true", help="print the plan and what is cached, train nothing")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key of every run (e.g. amp=off on a GPU; use another --out)")
    args = parser.parse_args(argv)
    picked = set(args.only.split(",")) if args.only else None
    seeds = {int(s) for s in args.seeds.split(",")} if args.seeds else None
    root = Path(args.runs_dir)
    common = dict(kv.split("=", 1) for kv in args.set)
    runs = [r for r in plan(common) if (picked is None or picked & {r.group, r.name})
            and (seeds is None or r.seed in seeds)]
    if not runs:
        parser.error(f"--only {args.only} --seeds {args.seeds} picks no run of the plan (see --list)")
    out = Path(args.out)
    # Runs finished in earlier sessions live in the committed results file (runs/ is not kept).
    known = {r.get("key") or Path(r["run_dir"]).name: r for r in json.loads(out.read_text())["runs"]} \
        if out.is_file() else {}
    if args.list:
        for r in runs:
            cached = r.run_dir(root).path.name in known or (r.run_dir(root).path / "bench_record.json").is_file()
            print(f"{'cached ' if cached else 'to run '} {r.group:9s} {r.name:32s} seed {r.seed}")
        return 0
    torch.set_num_threads(os.cpu_count() or 1)
    for i, run in enumerate(runs, 1):
        print(f"[{i}/{len(runs)}] {run.name} seed {run.seed}", flush=True)
        record = execute(run, root, known)
        known[record.get("key", run.run_dir(root).path.name)] = record
        # The results file covers every finished run of the whole plan, whatever --only picked.
        records = [known[k] for r in plan(common) if (k := r.run_dir(root).path.name) in known]
        rows = summarise(records)
        write_result({"machine": record["machine_before_run"], "written": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "summary": rows, "targets": targets(rows), "runs": records}, args.out, detail="runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
