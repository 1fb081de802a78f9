"""Benchmark: fp32 against mixed-precision training throughput on this machine's device.

Trains the SmallCNN (configs/smallcnn.json) on synthetic uint8 batches fed
through the project's pipeline, rounds interleaved so that noise hits every
mode alike (the median round is kept). Modes: fp32 and bf16 autocast on any
device, plus fp16 autocast with a gradient scaler on CUDA. On a CPU without
native bf16 (no AVX512-BF16 or AMX), bf16 is emulated: the bench still times it
to show what ``--amp auto`` avoids by staying fp32 there.

Usage:
    python bench/amp.py [--device auto] [--steps 30] [--rounds 3] [--batch-size 256]
Writes results/bench/amp-<device kind>.json (amp-cpu.json, amp-cuda.json); ``BLOCKS``: the sentences
the docs quote from them.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import read_result, write_result  # noqa: E402
from cifar.config import TrainConfig, apply_overrides  # noqa: E402
from cifar.data import Split, channel_stats  # noqa: E402
from cifar.loop import train_one_epoch  # noqa: E402
from cifar.model import build_model, model_cost  # noqa: E402
from cifar.optim import build_optimizer  # noqa: E402
from cifar.pipeline import Pipeline  # noqa: E402
from cifar.runtime import autocast_factory, cpu_has_native_bf16, resolve_amp, resolve_device  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
AUTO_NAMES = {v: k for k, v in DTYPES.items()}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_mode(cfg: TrainConfig, batches: Pipeline, dtype: torch.dtype | None, steps: int) -> float:
    """Training images/s of ``steps`` optimizer steps (after 5 warm-up steps) in one precision."""
    device = batches.device
    torch.manual_seed(0)
    model = build_model(cfg, device)
    optimizer = build_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    autocast = autocast_factory(device, dtype)

    def endless():
        while True:
            yield from batches

    it = endless()
    train_one_epoch(model, itertools.islice(it, 5), optimizer, scheduler, scaler, cfg, autocast)
    synchronize(device)
    start = time.perf_counter()
    train_one_epoch(model, itertools.islice(it, steps), optimizer, scheduler, scaler, cfg, autocast)
    synchronize(device)
    return steps * cfg.batch_size / (time.perf_counter() - start)


def amp_table() -> str:
    """fp32 against mixed precision, on the 2-core CPU and on a lent H200 (amp-cpu.json, amp-cuda.json), with
    what ``--amp auto`` picks on each device kind today (the code's choice, not the one the file recorded)."""
    rows = []
    for name, machine in (("amp-cpu", "the slower 2-core CPU (AVX2, no native bf16)"), ("amp-cuda", "lent H200")):
        d = read_result(name)
        ips = d["train_images_per_s"]
        fp16 = (f"{ips['fp16']:,.0f} img/s ({d['ratio_fp16_to_fp32']:.2f}x)" if "fp16" in ips else "n/a")
        note = "" if d["native_bf16"] else ", emulated"
        auto = AUTO_NAMES[resolve_amp("auto", torch.device(d["machine"]["device"]))]
        rows.append(f"| {machine} | `{d['command']}` | {ips['fp32']:,.0f} img/s | {ips['bf16']:,.0f} img/s "
                    f"({d['ratio_bf16_to_fp32']:.2f}x{note}) | {fp16} | {auto} |")
    return "\n".join(["| machine | command | fp32 | bf16 | fp16 | what `auto` picks |",
                      "|---|---|---|---|---|---|", *rows])


# The sentences the docs quote from this script's results files (bench/blocks.py places them).
BLOCKS = {"amp_table": amp_table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "smallcnn.json"))
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is kept")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", default=None, help="default: results/bench/amp-<device kind>.json")
    args = parser.parse_args()

    device = resolve_device(args.device)
    cfg = apply_overrides(TrainConfig.from_json(args.config),
                          {"device": str(device), "batch_size": args.batch_size})
    g = torch.Generator().manual_seed(0)
    n = args.batch_size * 8
    split = Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                  torch.randint(0, 10, (n,), generator=g))
    mean, std = channel_stats(split.x)
    batches = Pipeline(split, cfg, mean, std, device, train=True)
    modes = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    native_bf16 = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_native_bf16()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"{name}, torch {torch.__version__}, batch {args.batch_size}, {args.rounds} rounds x "
          f"{args.steps} steps, native bf16: {native_bf16}", flush=True)

    runs: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(args.rounds):
        for m in modes:
            runs[m].append(time_mode(cfg, batches, DTYPES[m], args.steps))
        print(f"round {r + 1}: " + ", ".join(f"{m} {v[-1]:.0f} img/s" for m, v in runs.items()), flush=True)
    med = {m: statistics.median(v) for m, v in runs.items()}
    flops = model_cost(cfg.model)[1]
    result = {
        "command": f"python bench/amp.py --device {args.device} --steps {args.steps} --rounds {args.rounds} "
                   f"--batch-size {args.batch_size}",
        "machine": {"platform": platform.platform(), "device": str(device), "device_name": name,
                    "torch": torch.__version__, "threads": torch.get_num_threads()},
        "native_bf16": native_bf16, "batch_size": args.batch_size, "model_forward_mflops": flops / 1e6,
        "train_images_per_s": med,
        "train_tflops": {m: v * 3 * flops / 1e12 for m, v in med.items()},
        **{f"ratio_{m}_to_fp32": med[m] / med["fp32"] for m in modes if m != "fp32"},
        "amp_auto_picks": AUTO_NAMES[resolve_amp("auto", device)],
        "rounds": runs,
    }
    write_result(result, args.out or ROOT / "results" / "bench" / f"amp-{device.type}.json", detail="rounds")


if __name__ == "__main__":
    main()
