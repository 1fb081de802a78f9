"""Benchmark: training speed with glibc's malloc as it is against malloc keeping freed memory.

A CPU training step allocates its activations and frees them; glibc maps every block
over 32 MB afresh and unmaps it when freed, so each step faults in and zeroes its
pages again (``cifar.runtime.keep_freed_memory`` explains the fix). This script trains
the same short run of ``configs/fast.json`` with ``CIFAR_MALLOC=system`` (glibc as it is)
and with the default (freed memory kept), each run its own process, the two arms
interleaved round by round (the order alternating), and reports per arm: training
images/s, achieved training GFLOP/s (3 x forward FLOPs per image) against the fp32
matmul GFLOP/s measured in the same run, CPU seconds in user and kernel mode, minor
page faults, and peak resident memory.

Usage:
    CIFAR10_DIR=../shared/data/cifar10-jpeg python bench/allocator.py [--rounds 3] [--epochs 2]
        [--train-fraction 0.2] [--batch-size 512]
Writes results/bench/allocator.json; ``BLOCKS``: the sentences the docs quote from it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import matmul_gflops, read_result, run_python, write_result  # noqa: E402
from cifar.runtime import device_name  # noqa: E402

ARMS = {"system": "system", "kept": "keep"}  # arm -> CIFAR_MALLOC


def one_run(arm: str, out: Path, args: argparse.Namespace) -> dict:
    """Train one run in its own process under ``arm``'s malloc; its speed and resource use."""
    usage = run_python(["-m", "cifar.train", "--config", str(ROOT / "configs" / "fast.json"), "--out", str(out),
                        "--set", f"epochs={args.epochs}", "--set", f"data.train_fraction={args.train_fraction}",
                        "--set", f"batch_size={args.batch_size}"],
                       env={**os.environ, "CIFAR_MALLOC": ARMS[arm]}, quiet=True)
    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    provenance = json.loads((out / "config.json").read_text())["provenance"]
    ips = statistics.fmean(float(r["images_per_s"]) for r in rows)
    return {"arm": arm, "malloc": provenance.get("malloc"), "images_per_s": round(ips, 1),
            "train_gflops_per_s": round(3 * provenance["flops"] * ips / 1e9, 1),
            "user_s": round(usage.ru_utime, 1), "sys_s": round(usage.ru_stime, 1),
            "sys_share": round(usage.ru_stime / (usage.ru_utime + usage.ru_stime), 3),
            "minor_faults": usage.ru_minflt, "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def allocator_line(name: str = "allocator") -> str:
    """The docs' sentence on results/bench/<name>.json: the two arms' speed, kernel time, faults, memory."""
    d = read_result(name)
    system, kept = d["arms"]["system"], d["arms"]["kept"]
    rounds = d["ratio_kept_to_system_per_round"]
    return (f"on a {d['machine']['threads']}-thread {d['machine']['cpu']}, {len(rounds)} interleaved rounds of "
            f"{d['epochs']} epochs of `{d['config']}` on {100 * d['train_fraction']:.0f}% of the split at batch "
            f"{d['batch_size']}: {system['images_per_s_mean']:.0f} training images/s with malloc as it is, "
            f"{kept['images_per_s_mean']:.0f} with freed memory kept ({d['ratio_kept_to_system']:.2f}x; per round "
            f"{min(rounds):.2f}x to {max(rounds):.2f}x); the kernel's share of CPU time "
            f"{100 * system['sys_share_mean']:.1f}% against {100 * kept['sys_share_mean']:.1f}%, "
            f"{system['minor_faults_mean'] / kept['minor_faults_mean']:.0f} times fewer page faults, peak memory "
            f"{kept['peak_rss_mb_max']:.0f} MB against {system['peak_rss_mb_max']:.0f}; "
            f"training at {kept['train_gflops_per_s']:.0f} GFLOP/s, "
            f"{100 * kept['share_of_matmul']:.0f}% of the fp32 matmul measured in the same run "
            f"({d['machine']['matmul_gflops_best']:.0f} GFLOP/s)")


# The sentences the docs quote from this script's results files (bench/blocks.py places them).
BLOCKS = {"allocator_line": allocator_line, "allocator_b1024_line": lambda: allocator_line("allocator-b1024"),
          "allocator_b1024_epyc_line": lambda: allocator_line("allocator-b1024-epyc")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="runs per arm, interleaved")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-fraction", type=float, default=0.2)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--out", default=str(ROOT / "results" / "bench" / "allocator.json"))
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.epochs < 1 or not 0 < args.train_fraction <= 1:
        parser.error("--rounds and --epochs must be at least 1, --train-fraction in (0, 1]")
    matmul = [round(matmul_gflops(2048, 10), 1)]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = list(ARMS) if r % 2 == 0 else list(reversed(ARMS))
            for arm in order:
                runs.append(one_run(arm, Path(tmp) / f"{arm}-{r}", args) | {"round": r})
                print(json.dumps(runs[-1]), flush=True)
            matmul.append(round(matmul_gflops(2048, 10), 1))
    best_matmul = max(matmul)
    by_arm = {arm: [x for x in runs if x["arm"] == arm] for arm in ARMS}  # each in round order
    arms = {}
    for arm, mine in by_arm.items():
        ips = [x["images_per_s"] for x in mine]
        gflops = statistics.fmean(x["train_gflops_per_s"] for x in mine)
        arms[arm] = {"images_per_s": ips, "images_per_s_mean": round(statistics.fmean(ips), 1),
                     "train_gflops_per_s": round(gflops, 1), "share_of_matmul": round(gflops / best_matmul, 3),
                     "sys_share_mean": round(statistics.fmean(x["sys_share"] for x in mine), 3),
                     "minor_faults_mean": round(statistics.fmean(x["minor_faults"] for x in mine)),
                     "peak_rss_mb_max": max(x["peak_rss_mb"] for x in mine)}
    pairs = [k["images_per_s"] / s["images_per_s"] for s, k in zip(by_arm["system"], by_arm["kept"], strict=True)]
    result = {"command": "python bench/allocator.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": {"cpu": device_name(torch.device("cpu")), "threads": torch.get_num_threads(),
                          "matmul_gflops": matmul, "matmul_gflops_best": best_matmul},
              "config": "configs/fast.json", "epochs": args.epochs, "train_fraction": args.train_fraction,
              "batch_size": args.batch_size, "arms": arms,
              "ratio_kept_to_system_per_round": [round(p, 3) for p in pairs],
              "ratio_kept_to_system": round(statistics.fmean(pairs), 3), "runs": runs}
    write_result(result, args.out, detail="runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
