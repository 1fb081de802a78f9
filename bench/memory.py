"""Benchmark: peak memory of a training run, and where it goes.

Each measurement is its own process, so its peak resident set is its own
(``os.wait4``): Python with ``import torch`` only; that plus the data set as a
run holds it (``prepare_data``); and one epoch of a config on 10% of the train
split at several batch sizes (the activations of a batch grow with it), each
four ways, side by side: as a run trains by default (``max_pool2d``), with the
low-memory max pooling kernel only (``cifar/pool.py``, ``CIFAR_LOWMEM_POOL=1``),
and with ``low_memory`` (the kernel, BatchNorm and activation outputs recomputed
in the backward pass by ``cifar/recompute.py``, freed memory returned to the
system), and ``low_memory`` with glibc's malloc at its defaults
(``CIFAR_MALLOC=system``), with each run's training images/s. Speed, side by side: the two
poolings alternating step by step in one process (``step_images_per_s``), and
``low_memory`` against the default in alternating runs at the largest batch
(``low_memory_rounds``; it changes malloc for the whole process, so each run is
its own). Where the activations go: the tensors autograd keeps for the backward
pass of one training step, per batch size and way, in total and by shape
(``saved_for_backward``).

Usage:
    CIFAR10_DIR=../shared/data/cifar10-jpeg python bench/memory.py [--config configs/fast.json]
        [--batch-sizes 256,512,1024] [--rounds 3]
Writes results/bench/memory.json; ``BLOCKS``: the sentences the docs quote from it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import read_result, run_python, write_result  # noqa: E402
from cifar.config import TrainConfig, apply_overrides  # noqa: E402
from cifar.model import build_model  # noqa: E402
from cifar.pool import ENV, kernel  # noqa: E402
from cifar.rundir import RunDir  # noqa: E402
from cifar.runtime import device_name, keep_freed_memory, memory_format  # noqa: E402

POOLS = {"kernel": "1", "max_pool2d": "0"}  # CIFAR_LOWMEM_POOL for each
# each way's environment and low_memory (which takes the kernel by itself); the last: low_memory with
# glibc's malloc left at its defaults (CIFAR_MALLOC=system), to show what its own malloc setting does
WAYS = {"max_pool2d": ({ENV: "0"}, False), "kernel": ({ENV: "1"}, False), "low_memory": ({ENV: "0"}, True),
        "low_memory_glibc_default": ({ENV: "0", "CIFAR_MALLOC": "system"}, True)}


def peak_mb(args: list[str], env: dict[str, str] | None = None) -> float:
    """Peak resident memory (MB) of ``python ARGS`` run to its end."""
    return round(run_python(args, env=env, quiet=True).ru_maxrss / 1024, 1)


def train_model(config: str | TrainConfig, low_memory: bool = False) -> tuple[torch.nn.Module, torch.memory_format]:
    """``config``'s model (a config file's, or a config's) in training mode, in the memory layout a run
    gives it, and that layout."""
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_json(config)
    cfg = apply_overrides(cfg, {"low_memory": low_memory, "device": "cpu"})
    return build_model(cfg).train(), memory_format(cfg)


def epoch_run(config: str, batch: str, way: str, out: Path) -> tuple[float, float]:
    """(peak MB, training images/s) of one epoch on 10% of the split, in its own process, ``way``."""
    env, low_memory = WAYS[way]
    peak = peak_mb(["-m", "cifar.train", "--config", config, "--epochs", "1", "--train_fraction", "0.1",
                    "--batch_size", batch, "--low_memory", str(low_memory).lower(), "--out", str(out)],
                   env={**os.environ, **env})
    return peak, round(RunDir(out).read_history()[-1]["images_per_s"], 1)


def low_memory_rounds(config: str, batch: str, rounds: int, tmp: Path) -> dict:
    """``low_memory`` against the default, one epoch each, alternating runs (the order alternating too)."""
    runs = []
    for r in range(rounds):
        for way in (("max_pool2d", "low_memory") if r % 2 else ("low_memory", "max_pool2d")):
            peak, speed = epoch_run(config, batch, way, tmp / f"round{r}-{way}")
            runs.append({"round": r, "way": way, "peak_mb": peak, "images_per_s": speed})
    mean = {way: statistics.mean(x["images_per_s"] for x in runs if x["way"] == way)
            for way in ("max_pool2d", "low_memory")}
    return {"batch": int(batch), "rounds": rounds, "runs": runs,
            "images_per_s_mean": {k: round(v, 1) for k, v in mean.items()},
            "ratio": round(mean["low_memory"] / mean["max_pool2d"], 3),
            "peak_mb_max": {way: max(x["peak_mb"] for x in runs if x["way"] == way) for way in mean}}


def saved_for_backward(config: str, batch: int, low_memory: bool = False) -> dict:
    """MB of the distinct tensors autograd saves for the backward pass of one training forward
    pass of ``config``'s model on ``batch`` images (in the layout a run gives it, and with
    the pooling ``CIFAR_LOWMEM_POOL`` selects, or ``low_memory``'s): in total, and the largest kinds by shape."""
    model, layout = train_model(config, low_memory)
    kept: dict[tuple, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept[(t.data_ptr(), str(t.dtype).removeprefix("torch."), tuple(t.shape[1:]))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(batch, 3, 32, 32).to(memory_format=layout))
    by_kind: dict[str, float] = {}
    for (_, dtype, shape), size in kept.items():
        kind = f"{dtype} {'x'.join(map(str, shape))}"
        by_kind[kind] = by_kind.get(kind, 0) + size / 2**20
    largest = sorted(by_kind.items(), key=lambda kv: -kv[1])[:4]
    return {"total_mb": round(sum(kept.values()) / 2**20, 1), "largest_mb": {k: round(v, 1) for k, v in largest}}


def step_speed(config: str, batch: int, steps: int) -> dict:
    """Training images/s of one model's steps with each pooling, alternating step by step in this
    process (freed memory kept, as a run does), and the kernel's ratio: the median of ``steps``."""
    keep_freed_memory(torch.device("cpu"))
    torch.manual_seed(0)
    model, layout = train_model(config)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32).to(memory_format=layout)
    y = torch.randint(0, 10, (batch,))
    seconds: dict[str, list[float]] = {pool: [] for pool in POOLS}
    for step in range(steps + 1):  # the first round warms up
        for pool in (POOLS if step % 2 else reversed(POOLS)):
            os.environ[ENV] = POOLS[pool]
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            if step:
                seconds[pool].append(time.perf_counter() - start)
    speed = {pool: round(batch / statistics.median(s), 1) for pool, s in seconds.items()}
    return {**speed, "kernel_ratio": round(speed["kernel"] / speed["max_pool2d"], 3), "steps": steps}


def memory_line() -> str:
    """Peak memory of training each way (the default, the pooling kernel, low_memory), where it goes, and
    what low_memory costs (memory.json)."""
    d = read_result("memory")
    epochs, saved, biggest = d["training_epoch_mb"], d["saved_for_backward"], max(d["saved_for_backward"], key=int)

    def per_batch(table: dict, way: str) -> str:
        return ", ".join(f"{v[way] / 1024:.2f} GB at batch {k}" for k, v in table.items())

    def saved_mb(way: str) -> str:
        return ", ".join(f"{v[way]['total_mb'] / 1024:.2f} GB at batch {k}" for k, v in saved.items())

    kinds = ", ".join(f"{kind} {mb:.0f} MB" for kind, mb in saved[biggest]["max_pool2d"]["largest_mb"].items())
    steps, rounds = d["step_images_per_s"][biggest], d["low_memory_rounds"]
    speeds = rounds["images_per_s_mean"]
    return (f"on a {d['threads']}-thread {d['machine']}, one epoch on 10% of the split (`{d['config']}`), "
            f"peak resident memory: {per_batch(epochs, 'max_pool2d')}; with the low-memory pooling kernel only "
            f"{per_batch(epochs, 'kernel')}; with `low_memory` **{per_batch(epochs, 'low_memory')}** (with "
            f"glibc's malloc left at its defaults: {per_batch(epochs, 'low_memory_glibc_default')}). "
            f"`import torch` alone: {d['import_torch_mb'] / 1024:.2f} GB, with the data set: "
            f"{d['import_torch_and_data_mb'] / 1024:.2f} GB. The activations autograd keeps for one backward "
            f"pass: {saved_mb('max_pool2d')} (with the kernel: {saved_mb('kernel')}; with `low_memory`: "
            f"{saved_mb('low_memory')}); the largest kinds at batch {biggest} (per image: dtype, channels x height "
            f"x width): {kinds}. The kernel's training steps at batch {biggest}, alternating with max_pool2d's: "
            f"{steps['kernel']:.0f} against {steps['max_pool2d']:.0f} images/s ({steps['kernel_ratio']:.2f}x). "
            f"`low_memory` against the default, {rounds['rounds']} alternating runs each at batch "
            f"{rounds['batch']}: {speeds['low_memory']:.0f} against {speeds['max_pool2d']:.0f} training images/s "
            f"({rounds['ratio']:.2f}x), peaks up to {rounds['peak_mb_max']['low_memory'] / 1024:.2f} against "
            f"{rounds['peak_mb_max']['max_pool2d'] / 1024:.2f} GB")


# The sentences the docs quote from this script's results files (bench/blocks.py places them).
BLOCKS = {"memory_line": memory_line}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "fast.json"))
    parser.add_argument("--batch-sizes", default="256,512,1024")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of low_memory and the default")
    parser.add_argument("--out", default=str(ROOT / "results" / "bench" / "memory.json"))
    args = parser.parse_args(argv)
    data = ("from cifar.config import TrainConfig; from cifar.data import prepare_data; "
            f"prepare_data(TrainConfig.from_json({args.config!r}).data)")
    result = {"command": "python bench/memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "config": str(Path(args.config).relative_to(ROOT)) if Path(args.config).is_relative_to(ROOT)
              else args.config,
              "machine": device_name(torch.device("cpu")), "threads": torch.get_num_threads(),
              "import_torch_mb": peak_mb(["-c", "import torch"]),
              "import_torch_and_data_mb": peak_mb(["-c", data]), "kernel_built": kernel() is not None,
              "training_epoch_mb": {}, "training_images_per_s": {}, "saved_for_backward": {}}
    batches = args.batch_sizes.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        for batch in batches:
            result["training_epoch_mb"][batch], result["training_images_per_s"][batch] = {}, {}
            for way in WAYS:
                peak, speed = epoch_run(args.config, batch, way, Path(tmp) / f"b{batch}-{way}")
                result["training_epoch_mb"][batch][way], result["training_images_per_s"][batch][way] = peak, speed
        result["low_memory_rounds"] = low_memory_rounds(args.config, batches[-1], args.rounds, Path(tmp))
    for batch in batches:
        result["saved_for_backward"][batch] = {}
        for way, (env, low_memory) in WAYS.items():
            if "CIFAR_MALLOC" in env:  # malloc changes nothing autograd keeps
                continue
            os.environ[ENV] = env[ENV]  # read at each call
            result["saved_for_backward"][batch][way] = saved_for_backward(args.config, int(batch), low_memory)
    if result["kernel_built"]:
        result["step_images_per_s"] = {batch: step_speed(args.config, int(batch), 8) for batch in batches}
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
