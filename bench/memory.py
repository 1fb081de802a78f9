"""Benchmark: peak memory of a training run, and where it goes.

Each measurement is its own process, so its peak resident set is its own
(``os.wait4``): Python with ``import torch`` only; that plus the data set as a
run holds it (``prepare_data``); and one epoch of a config on 10% of the train
split at several batch sizes (the activations of a batch grow with it). Where
the activations go: the tensors autograd keeps for the backward pass of one
training step, per batch size, in total and by shape (``saved_for_backward``).

Usage:
    CIFAR10_DIR=../shared/data/cifar10-jpeg python bench/memory.py [--config configs/fast.json]
        [--batch-sizes 256,512,1024]
Writes results/bench/memory.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import run_python, write_result  # noqa: E402


def peak_mb(args: list[str]) -> float:
    """Peak resident memory (MB) of ``python ARGS`` run to its end."""
    return round(run_python(args, quiet=True).ru_maxrss / 1024, 1)


def saved_for_backward(config: str, batch: int) -> dict:
    """MB of the distinct tensors autograd saves for the backward pass of one training forward
    pass of ``config``'s model on ``batch`` images: in total, and the largest kinds by shape."""
    import torch

    from cifar.config import TrainConfig
    from cifar.model import SmallCNN

    cfg = TrainConfig.from_json(config)
    model = SmallCNN(cfg.model).train()
    kept: dict[tuple, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept[(t.data_ptr(), str(t.dtype).removeprefix("torch."), tuple(t.shape[1:]))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(batch, 3, 32, 32))
    by_kind: dict[str, float] = {}
    for (_, dtype, shape), size in kept.items():
        kind = f"{dtype} {'x'.join(map(str, shape))}"
        by_kind[kind] = by_kind.get(kind, 0) + size / 2**20
    largest = sorted(by_kind.items(), key=lambda kv: -kv[1])[:4]
    return {"total_mb": round(sum(kept.values()) / 2**20, 1), "largest_mb": {k: round(v, 1) for k, v in largest}}


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
              "import_torch_mb": peak_mb(["-c", "import torch"]),
              "import_torch_and_data_mb": peak_mb(["-c", data]), "training_epoch_mb": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for batch in args.batch_sizes.split(","):
            result["training_epoch_mb"][batch] = peak_mb([
                "-m", "cifar.train", "--config", args.config, "--epochs", "1", "--train_fraction", "0.1",
                "--batch_size", batch, "--out", str(Path(tmp) / f"b{batch}")])
    result["saved_for_backward"] = {b: saved_for_backward(args.config, int(b)) for b in args.batch_sizes.split(",")}
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
