"""Benchmark: CPU inference images/s of PyTorch against onnxruntime, at batch 1 and 256.

Both run the same exported classifier (uint8 images in, logits out, normalisation
inside) on the same random images, in interleaved rounds (the median is kept),
with the same number of threads. The ONNX file is exported from the run's
best.pt first if the run has no model.onnx.

Usage:
    python bench/inference.py RUN_DIR [--rounds 3] [--seconds 3]
Writes results/bench/inference.json; ``BLOCKS``: the sentences the docs quote from it.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import read_result, write_result  # noqa: E402
from cifar.export import classifier_from_checkpoint, export_onnx, onnx_session  # noqa: E402


def images_per_s(run, images: np.ndarray, seconds: float) -> float:
    """Images/s of repeated calls of ``run(images)`` for about ``seconds`` (after 2 warm-up calls)."""
    run(images)
    run(images)
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        run(images)
        calls += 1
    return calls * len(images) / elapsed


def inference_table() -> str:
    """PyTorch against onnxruntime on the CPU (inference.json)."""
    d = read_result("inference")
    ips = d["images_per_s"]
    return "\n".join([
        "| images/s | PyTorch (eager) | onnxruntime | ratio |", "|---|---|---|---|",
        f"| batch 1 | {ips['pytorch_batch1']:.0f} ({d['latency_ms_batch1_pytorch']:.1f} ms) | "
        f"{ips['onnxruntime_batch1']:.0f} ({d['latency_ms_batch1_onnxruntime']:.1f} ms) | "
        f"**{d['ratio_onnxruntime_to_pytorch_batch1']:.1f}x** |",
        f"| batch 256 | {ips['pytorch_batch256']:.0f} | {ips['onnxruntime_batch256']:.0f} | "
        f"**{d['ratio_onnxruntime_to_pytorch_batch256']:.1f}x** |",
    ])


# The sentences the docs quote from this script's results files (bench/blocks.py places them).
BLOCKS = {"inference_table": inference_table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="run directory with best.pt (and model.onnx, else it is exported)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--out", default=str(ROOT / "results" / "bench" / "inference.json"))
    args = parser.parse_args()

    run_dir = Path(args.run_dir)
    model, classes, _ = classifier_from_checkpoint(run_dir / "best.pt")
    onnx_path = run_dir / "model.onnx"
    if not onnx_path.is_file():
        export_onnx(model, classes, onnx_path)
    session, _ = onnx_session(onnx_path)
    threads = torch.get_num_threads()

    @torch.no_grad()
    def torch_run(x: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(x)).numpy()

    def ort_run(x: np.ndarray) -> np.ndarray:
        return session.run(["logits"], {"images": x})[0]

    rng = np.random.default_rng(0)
    batches = {b: rng.integers(0, 256, (b, 3, 32, 32), dtype=np.uint8) for b in (1, 256)}
    runs: dict[str, list[float]] = {f"{name}_batch{b}": [] for b in batches for name in ("pytorch", "onnxruntime")}
    print(f"torch {torch.__version__} ({threads} threads), onnxruntime; {args.rounds} rounds x "
          f"{args.seconds} s", flush=True)
    for r in range(args.rounds):
        for b, x in batches.items():
            runs[f"pytorch_batch{b}"].append(images_per_s(torch_run, x, args.seconds))
            runs[f"onnxruntime_batch{b}"].append(images_per_s(ort_run, x, args.seconds))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in runs.items()), flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    result = {
        "command": f"python bench/inference.py {args.run_dir} --rounds {args.rounds} --seconds {args.seconds}",
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch_threads": threads, "torch": torch.__version__},
        "model": str(onnx_path), "images_per_s": med,
        **{f"ratio_onnxruntime_to_pytorch_batch{b}": med[f"onnxruntime_batch{b}"] / med[f"pytorch_batch{b}"]
           for b in batches},
        **{f"latency_ms_batch1_{n}": 1000 / med[f"{n}_batch1"] for n in ("pytorch", "onnxruntime")},
        "rounds": runs,
    }
    write_result(result, args.out, detail="rounds")


if __name__ == "__main__":
    main()
