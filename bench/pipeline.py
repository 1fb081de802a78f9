"""Benchmark: the data pipeline against compute alone and the conventional pipeline.

Measured side by side in one run, rounds interleaved so that machine noise hits
every variant alike (the median round is reported):

- training images/s of the SmallCNN fed by (a) the project's pipeline,
  (b) pre-made normalised tensors (compute only), (c) the conventional
  per-image torchvision-transforms DataLoader;
- the pipelines alone, no model: augmented, normalised batches/s of the
  project's pipeline and of the conventional one, with the same CPU budget;
- the GFLOP/s that (b) achieves (3x forward FLOPs per trained image) next to
  the machine's fp32 matmul GFLOP/s, and the peak memory of a real training run.

Usage:
    CIFAR10_DIR=../shared/data/cifar10-jpeg python bench/pipeline.py [--steps 40] [--rounds 3]
Writes results/bench/pipeline.json; ``BLOCKS``: the sentences the docs quote from it.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import matmul_gflops, read_result, write_result  # noqa: E402
from cifar.config import TrainConfig, apply_overrides  # noqa: E402
from cifar.data import prepare_data  # noqa: E402
from cifar.loop import train_one_epoch  # noqa: E402
from cifar.model import build_model, model_cost  # noqa: E402
from cifar.optim import build_optimizer  # noqa: E402
from cifar.pipeline import Pipeline  # noqa: E402


def time_training(cfg: TrainConfig, batches, steps: int) -> float:
    """Images/s of ``steps`` optimizer steps (after 3 warm-up steps) on a fresh SmallCNN."""
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    it = iter(batches)
    train_one_epoch(model, itertools.islice(it, 3), optimizer, scheduler, scaler, cfg, nullcontext)
    start = time.perf_counter()
    train_one_epoch(model, itertools.islice(it, steps), optimizer, scheduler, scaler, cfg, nullcontext)
    return steps * cfg.batch_size / (time.perf_counter() - start)


def time_pipeline(batches, steps: int) -> float:
    """Batches/s delivered by a pipeline alone (after 3 warm-up batches)."""
    it = iter(batches)
    for _ in itertools.islice(it, 3):
        pass
    start = time.perf_counter()
    n = sum(1 for _ in itertools.islice(it, steps))
    return n / (time.perf_counter() - start)


def endless(make):
    """Cycle through fresh epochs of a pipeline so a measurement never runs dry."""
    while True:
        yield from make()


def peak_memory_of_training_run(config: Path) -> float:
    """Peak RSS (MB) of a real 1-epoch `cifar.train` run on a 5% slice of the train split."""
    out = ROOT / "runs" / "bench-memory"
    cmd = [sys.executable, "-m", "cifar.train", "--config", str(config), "--epochs", "1",
           "--train_fraction", "0.05", "--out", str(out)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def pipeline_table() -> str:
    """The data pipeline against compute alone and the conventional pipeline, against its aims (pipeline.json)."""
    d = read_result("pipeline")
    ips, alone = d["train_images_per_s"], d["pipeline_alone_batches_per_s"]
    return "\n".join([
        "| | measured | aimed at |", "|---|---|---|",
        f"| training images/s, (a) project pipeline | {ips['pipeline']:.0f} | |",
        f"| training images/s, (b) compute only (pre-made normalised tensors) | {ips['compute_only']:.0f} | |",
        f"| training images/s, (c) conventional torchvision-transforms DataLoader "
        f"({alone['conventional_workers']} workers) | {ips['conventional']:.0f} | |",
        f"| (a) / (b) | **{d['ratio_pipeline_to_compute_only']:.3f}** | >= 0.95 |",
        f"| pipeline alone, augmented normalised batches/s: project vs conventional | {alone['pipeline']:.0f} vs "
        f"{alone['conventional']:.1f} = **{d['ratio_pipeline_alone_to_conventional']:.1f}x** | >= 5x |",
        f"| (b) achieved GFLOP/s (3 x forward FLOPs per trained image) | {d['compute_only_gflops']:.0f} | |",
        f"| fp32 matmul GFLOP/s (4096², best of 10) | {d['matmul_fp32_gflops']:.0f} | |",
        f"| (b) / matmul | **{d['ratio_compute_gflops_to_matmul']:.2f}** | >= 0.70 |",
        f"| peak RSS of a real training run (`cifar.train`, 1 epoch on 5%) | "
        f"**{d['peak_training_rss_mb']:.0f} MB** | < 2 GB |",
    ])


# The sentences the docs quote from this script's results files (bench/blocks.py places them).
BLOCKS = {"pipeline_table": pipeline_table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "smallcnn.json"))
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is kept")
    parser.add_argument("--out", default=str(ROOT / "results" / "bench" / "pipeline.json"))
    args = parser.parse_args()

    cfg = apply_overrides(TrainConfig.from_json(args.config), {"device": "cpu"})
    conventional = apply_overrides(cfg, {"pipeline": "torchvision"})
    data = prepare_data(cfg.data)
    cpu = torch.device("cpu")
    ours = Pipeline(data.train, cfg, data.mean, data.std, cpu, train=True)
    theirs = Pipeline(data.train, conventional, data.mean, data.std, cpu, train=True)
    premade = [(x.clone(), y.clone()) for x, y in itertools.islice(iter(ours), 8)]

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {cfg.batch_size}, "
          f"{args.rounds} rounds x {args.steps} steps", flush=True)
    runs: dict[str, list[float]] = {k: [] for k in
                                    ("train_pipeline", "train_compute_only", "train_conventional",
                                     "pipeline_alone", "conventional_alone")}
    for r in range(args.rounds):
        runs["train_pipeline"].append(time_training(cfg, endless(lambda: ours), args.steps))
        runs["train_compute_only"].append(time_training(cfg, itertools.cycle(premade), args.steps))
        runs["train_conventional"].append(time_training(cfg, endless(lambda: theirs), args.steps))
        runs["pipeline_alone"].append(time_pipeline(endless(lambda: ours), args.steps * 2))
        runs["conventional_alone"].append(time_pipeline(endless(lambda: theirs), args.steps))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in runs.items()), flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}

    flops = model_cost(cfg.model)[1]
    achieved = med["train_compute_only"] * 3 * flops / 1e9
    peak = matmul_gflops()
    memory_mb = peak_memory_of_training_run(Path(args.config))
    result = {
        "command": f"python bench/pipeline.py --steps {args.steps} --rounds {args.rounds}",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "batch_size": cfg.batch_size, "model_forward_mflops": flops / 1e6,
        "train_images_per_s": {"pipeline": med["train_pipeline"],
                               "compute_only": med["train_compute_only"],
                               "conventional": med["train_conventional"]},
        "ratio_pipeline_to_compute_only": med["train_pipeline"] / med["train_compute_only"],
        "ratio_pipeline_to_conventional_training": med["train_pipeline"] / med["train_conventional"],
        "pipeline_alone_batches_per_s": {"pipeline": med["pipeline_alone"],
                                         "conventional": med["conventional_alone"],
                                         "conventional_workers": conventional.data.num_workers},
        "ratio_pipeline_alone_to_conventional": med["pipeline_alone"] / med["conventional_alone"],
        "compute_only_gflops": achieved, "matmul_fp32_gflops": peak,
        "ratio_compute_gflops_to_matmul": achieved / peak,
        "peak_training_rss_mb": memory_mb,
        "rounds": runs,
    }
    write_result(result, args.out, detail="rounds")


if __name__ == "__main__":
    main()
