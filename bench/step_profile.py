"""Benchmark: where a CPU training step's time goes, layer by layer, against the fp32 matmul.

The fast recipe aims at training GFLOP/s of at least 75% of the fp32 matmul's, measured in the same
run. This script shows what limits that share on the machine it runs on. It trains ``--config``'s
model as a run's first epochs do (fp32, its memory layout, freed memory kept, the whitening layer's
bias training) on random batches and times, with module hooks, every convolution's forward and
backward pass (with their GFLOP/s, from the shapes) and the BatchNorm, activation and pooling
layers'; what is left of the step is the loss, the head, the optimizer and autograd's own work.
Rounds of steps alternate with fp32 matmul measurements. It reports the step's training GFLOP/s
(3 x forward FLOPs per image, the project's measure) as a share of the best matmul, and the share
the convolutions alone reach: the most that making every other op free could give.

Hooks rather than torch.profiler: recording shapes allocates small blocks between a step's large
tensors, after which glibc places the large ones in fresh pages, and the profiled steps fault in
memory that a run's steps reuse (the largest convolution output then took twice as long).

Usage:
    python bench/step_profile.py [--config configs/fast.json] [--set widths=64,256,256]
        [--batch-size 1024] [--steps 4] [--rounds 3] [--out results/bench/step_profile.json]
``BLOCKS``: the sentences the docs quote from its results files.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from bench.common import matmul_gflops, read_result, write_result  # noqa: E402
from bench.memory import train_model  # noqa: E402
from cifar.cli import split_set  # noqa: E402
from cifar.config import TrainConfig, apply_overrides  # noqa: E402
from cifar.model import model_cost  # noqa: E402
from cifar.pool import MaxPool2x2  # noqa: E402
from cifar.runtime import device_name, keep_freed_memory  # noqa: E402

KINDS = {nn.Conv2d: "conv", nn.BatchNorm2d: "batchnorm", nn.GELU: "activation", nn.ReLU: "activation",
         MaxPool2x2: "max pooling"}


class LayerTimer:
    """Wall seconds of each timed layer's forward and backward passes while ``on``, by layer name:
    a convolution by its shapes, any other kind by its kind. CPU ops run synchronously, so the time
    between a layer's pre-hook and hook is its own."""

    def __init__(self, model: nn.Module):
        self.on = False
        self.seconds: dict[str, dict[str, float]] = defaultdict(lambda: {"forward": 0.0, "backward": 0.0})
        self.names: dict[int, str] = {}  # id -> the layer's name, from its forward pass
        self.conv_flops: dict[int, tuple[str, int, int]] = {}  # id -> name, forward and backward FLOPs
        self.started: dict[tuple[int, str], float] = {}
        # a layer whose input needs no gradient (the whitening layer) has its backward hook fire before
        # its backward pass, which (the bias's gradient) then counts in the rest; PyTorch warns of it
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
        for layer in model.modules():
            kind = next((k for cls, k in KINDS.items() if isinstance(layer, cls)), None)
            if kind is None:
                continue
            layer.register_forward_pre_hook(lambda m, inputs: self._start(m, "forward"))
            layer.register_forward_hook(lambda m, inputs, out, kind=kind:
                                        self._stop(m, "forward", kind, inputs[0], out))
            layer.register_full_backward_pre_hook(lambda m, grad_out: self._start(m, "backward"))
            layer.register_full_backward_hook(lambda m, grad_in, grad_out: self._stop(m, "backward"))

    @property
    def flops(self) -> dict[str, dict[str, int]]:
        """Per convolution name, the FLOPs of its layers' forward and backward passes in a step."""
        total: dict[str, dict[str, int]] = defaultdict(lambda: {"forward": 0, "backward": 0})
        for name, forward, backward in self.conv_flops.values():
            total[name]["forward"] += forward
            total[name]["backward"] += backward
        return total

    def _start(self, m: nn.Module, phase: str) -> None:
        self.started[id(m), phase] = time.perf_counter()

    def _stop(self, m: nn.Module, phase: str, kind: str | None = None, inp: torch.Tensor | None = None,
              out: torch.Tensor | None = None) -> None:
        elapsed = time.perf_counter() - self.started.pop((id(m), phase))
        if phase == "forward":  # name the layer (the backward hooks have no input to name it by)
            self.names[id(m)] = kind
            if kind == "conv":
                _, c, h, w = inp.shape
                o, _, kh, kw = m.weight.shape
                name = self.names[id(m)] = f"conv {c}x{h}x{w} -> {o}, {kh}x{kw}"
                forward = 2 * out.numel() * m.weight[0].numel()
                # backward: the input's gradient and the weight's, where needed, each a forward's work
                self.conv_flops[id(m)] = (name, forward, forward * (inp.requires_grad + m.weight.requires_grad))
        if self.on:
            self.seconds[self.names[id(m)]][phase] += elapsed


def timed_round(step, timer: LayerTimer, steps: int) -> dict:
    """``steps`` steps, timed: a step's mean seconds and each layer's."""
    timer.seconds.clear()
    timer.on, wall = True, []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        wall.append(time.perf_counter() - start)
    timer.on = False
    layers = {name: {phase: s / steps for phase, s in v.items()} for name, v in timer.seconds.items()}
    return {"step_s": sum(wall) / steps, "layers": layers}


def summarise(rounds: list[dict], flops: dict[str, dict[str, int]], flops_per_image: int, batch: int,
              matmul: float) -> dict:
    """The rounds' mean: each layer's ms per step, a convolution's GFLOP/s, shares of the step."""
    step_s = statistics.fmean(r["step_s"] for r in rounds)
    names = {name for r in rounds for name in r["layers"]}
    layers, kinds = [], defaultdict(float)
    for name in names:
        s = {phase: statistics.fmean(r["layers"].get(name, {}).get(phase, 0.0) for r in rounds)
             for phase in ("forward", "backward")}
        row = {"layer": name, "forward_ms": round(s["forward"] * 1e3, 1), "backward_ms": round(s["backward"] * 1e3, 1),
               "share_of_step": round((s["forward"] + s["backward"]) / step_s, 3)}
        if name in flops:
            work = flops[name]
            row |= {f"{phase}_gflops_per_s": round(work[phase] / s[phase] / 1e9, 1) if s[phase] and work[phase]
                    else None for phase in ("forward", "backward")}
        layers.append(row)
        kinds[name.split(" ")[0] if name.startswith("conv") else name] += s["forward"] + s["backward"]
    conv_s = kinds["conv"]
    kinds["rest (loss, head, optimizer, autograd)"] = step_s - sum(kinds.values())
    train = 3 * flops_per_image * batch / step_s / 1e9
    conv_only = 3 * flops_per_image * batch / conv_s / 1e9
    return {"step_s": round(step_s, 3), "images_per_s": round(batch / step_s, 1),
            "train_gflops_per_s": round(train, 1), "share_of_matmul": round(train / matmul, 3),
            "conv_only_gflops_per_s": round(conv_only, 1), "conv_only_share_of_matmul": round(conv_only / matmul, 3),
            "share_of_step": {k: round(v / step_s, 3) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
            "layers": sorted(layers, key=lambda x: -x["share_of_step"])}


def step_profile_line(name: str = "step_profile") -> str:
    """Where a training step's time goes, layer kind by kind, against the matmul (<name>.json)."""
    d = read_result(name)
    m, shares = d["machine"], d["share_of_step"]
    setting = f"`{d['config']}`" + "".join(f" with {k}={v}" for k, v in d["overrides"].items())
    convs = [row for row in d["layers"] if row.get("forward_gflops_per_s")]
    rates = [(row[f"{p}_gflops_per_s"], row["layer"], p) for row in convs for p in ("forward", "backward")
             if row[f"{p}_gflops_per_s"] and row["share_of_step"] >= 0.05]
    slow, fast = min(rates), max(rates)
    parts = ", ".join(f"{k} {100 * v:.1f}%" for k, v in shares.items() if k != "conv")
    return (f"on a {m['threads']}-thread {m['cpu']}, {setting} at batch {d['batch_size']} ({d['rounds']} rounds of "
            f"{d['steps_per_round']} steps, the fp32 matmul measured before and between them: best "
            f"{m['matmul_gflops_best']:.0f} GFLOP/s): {d['images_per_s']:.0f} training images/s, "
            f"{d['train_gflops_per_s']:.0f} GFLOP/s, **{100 * d['share_of_matmul']:.0f}% of the matmul**; the "
            f"convolutions {100 * shares['conv']:.1f}% of the step, at {d['conv_only_gflops_per_s']:.0f} GFLOP/s "
            f"({100 * d['conv_only_share_of_matmul']:.0f}% of the matmul; the larger ones from "
            f"{slow[0]:.0f} GFLOP/s, the {slow[1].removeprefix('conv ')} {slow[2]} pass, to {fast[0]:.0f}, the "
            f"{fast[1].removeprefix('conv ')} {fast[2]} pass), then {parts}")


def xeon_conv_estimate() -> str:
    """The Xeon's convolutions' share of its matmul, estimated from this machine's other layers
    (step_profile.json) and the Xeon's allocator benchmark at batch 1024 (allocator-b1024.json)."""
    here, xeon = read_result("step_profile"), read_result("allocator-b1024")
    rest_share = 1 - here["share_of_step"]["conv"]
    rest_s = rest_share * here["step_s"]
    kept = xeon["arms"]["kept"]
    step_s = xeon["batch_size"] / kept["images_per_s_mean"]
    share = kept["share_of_matmul"]
    bounds = (share / (1 - rest_share), share * step_s / (step_s - rest_s))
    verdict = ("short of 75% even if every other layer cost nothing" if max(bounds) < 0.75
               else "so 75% would need the other layers to cost next to nothing" if max(bounds) < 0.8
               else "so making the other layers cheaper could reach 75%")
    return (f"If the layers other than convolutions took the same share of its step as here "
            f"({100 * rest_share:.1f}%), or the same time ({rest_s:.2f} s of its {step_s:.2f} s), its "
            f"convolutions alone would run at {100 * bounds[0]:.1f}% or {100 * bounds[1]:.1f}% of its matmul: "
            f"{verdict}")


# The sentences the docs quote from this script's results files (bench/blocks.py places them).
BLOCKS = {"step_profile_line": step_profile_line, "xeon_conv_estimate": xeon_conv_estimate,
          "step_profile_wide_line": lambda: step_profile_line("step_profile-wide")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "fast.json"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override, as cifar.train takes it (repeatable)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=8, help="untimed steps before the first round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each followed by a matmul measurement")
    parser.add_argument("--out", default=str(ROOT / "results" / "bench" / "step_profile.json"))
    args = parser.parse_args(argv)
    if min(args.batch_size, args.steps, args.rounds) < 1 or args.warmup < 0:
        parser.error("--batch-size, --steps and --rounds must be at least 1, --warmup at least 0")
    try:
        cfg = apply_overrides(TrainConfig.from_json(args.config), dict(split_set(kv) for kv in args.set))
    except (OSError, ValueError) as e:  # UsageError is a ValueError
        parser.error(f"--config/--set: {e}")
    keep_freed_memory(torch.device("cpu"))
    torch.manual_seed(0)
    model, layout = train_model(cfg)
    x = torch.randn(args.batch_size, 3, 32, 32).to(memory_format=layout)
    y = torch.randint(0, cfg.model.num_classes, (args.batch_size,))
    if getattr(model, "whitening", None) is not None:
        model.whitening.fit(x)  # whitening random images gives its output a run's scale
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9,
                                nesterov=True)

    def step() -> None:
        loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    timer = LayerTimer(model)
    matmul = [round(matmul_gflops(2048, 10), 1)]
    for _ in range(args.warmup):
        step()
    rounds = []
    for _ in range(args.rounds):
        rounds.append(timed_round(step, timer, args.steps))
        matmul.append(round(matmul_gflops(2048, 10), 1))
    _, flops = model_cost(cfg.model)
    config = Path(args.config).resolve()
    result = {"command": "python bench/step_profile.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": {"cpu": device_name(torch.device("cpu")), "threads": torch.get_num_threads(),
                          "matmul_gflops": matmul, "matmul_gflops_best": max(matmul)},
              "config": str(config.relative_to(ROOT)) if config.is_relative_to(ROOT) else args.config,
              "overrides": dict(split_set(kv) for kv in args.set),
              "batch_size": args.batch_size, "mflops_per_image": round(flops / 1e6, 2),
              "rounds": args.rounds, "steps_per_round": args.steps,
              "step_s_per_round": [round(r["step_s"], 3) for r in rounds],
              **summarise(rounds, timer.flops, flops, args.batch_size, max(matmul))}
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
