"""Benchmark: peak memory of a training run, and where it goes.

Each measurement is its own process, so its peak resident set is its own
(``os.wait4``): Python with ``import torch`` only; that plus the data set as a
run holds it (``prepare_data``); and one epoch of a config on 10% of the train
split at several batch sizes (the activations of a batch grow with it), each
twice, side by side: with the low-memory max pooling kernel (``cifar/pool.py``,
``CIFAR_LOWMEM_POOL=1``) and with ``max_pool2d`` (the default), with each run's
training images/s. The two poolings' speed, alternating step by step in one
process (``step_images_per_s``). Where the activations go: the tensors autograd
keeps for the backward pass of one training step, per batch size and pooling,
in total and by shape (``saved_for_backward``).

Usage:
    CIFAR10_DIR=../shared/data/cifar10-jpeg python bench/memory.py [--config configs/fast.json]
        [--batch-sizes 256,512,1024]
Writes results/bench/memory.json.
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

from bench.common import run_python, write_result  # noqa: E402
from cifar.config import TrainConfig  # noqa: E402
from cifar.model import SmallCNN  # noqa: E402
from cifar.pool import ENV, kernel  # noqa: E402
from cifar.rundir import RunDir  # noqa: E402
from cifar.runtime import device_name, keep_freed_memory  # noqa: E402

POOLS = {"kernel": "1", "max_pool2d": "0"}  # CIFAR_LOWMEM_POOL for each


def peak_mb(args: list[str], env: dict[str, str] | None = None) -> float:
    """Peak resident memory (MB) of ``python ARGS`` run to its end."""
    return round(run_python(args, env=env, quiet=True).ru_maxrss / 1024, 1)


def train_model(config: str) -> tuple[torch.nn.Module, torch.memory_format]:
    """``config``'s model in training mode, in the memory layout a run gives it, and that layout."""
    cfg = TrainConfig.from_json(config)
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    return SmallCNN(cfg.model).to(memory_format=layout).train(), layout


def saved_for_backward(config: str, batch: int) -> dict:
    """MB of the distinct tensors autograd saves for the backward pass of one training forward
    pass of ``config``'s model on ``batch`` images (in the layout a run gives it, and with
    the pooling ``CIFAR_LOWMEM_POOL`` selects): in total, and the largest kinds by shape."""
    model, layout = train_model(config)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "fast.json"))
    parser.add_argument("--batch-sizes", default="256,512,1024")
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
            for pool, flag in POOLS.items():
                out = Path(tmp) / f"b{batch}-{pool}"
                result["training_epoch_mb"][batch][pool] = peak_mb([
                    "-m", "cifar.train", "--config", args.config, "--epochs", "1", "--train_fraction", "0.1",
                    "--batch_size", batch, "--out", str(out)], env={**os.environ, ENV: flag})
                images_per_s = RunDir(out).read_history()[-1]["images_per_s"]
                result["training_images_per_s"][batch][pool] = round(images_per_s, 1)
    for batch in batches:
        result["saved_for_backward"][batch] = {}
        for pool, flag in POOLS.items():
            os.environ[ENV] = flag  # read at each call
            result["saved_for_backward"][batch][pool] = saved_for_backward(args.config, int(batch))
    if result["kernel_built"]:
        result["step_images_per_s"] = {batch: step_speed(args.config, int(batch), 8) for batch in batches}
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
