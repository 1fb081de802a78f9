"""Training: seeding, the epoch loop, the run directory, and the command line.

``train(cfg, data, run_dir)`` runs a plain loop (forward, loss, zero_grad,
backward, clip, step, schedule) and hands each epoch's metrics to callbacks:
console and CSV logging, checkpoints, early stopping, optional TensorBoard,
and whatever the caller adds (the study adds Optuna pruning).

Usage:
    python -m cifar.train --config configs/baseline.json --out runs/baseline
    python -m cifar.train --epochs 5 --lr 0.1 --optimizer adamw --dropout 0.2
    python -m cifar.train --resume runs/baseline
    torchrun --standalone --nproc_per_node=2 -m cifar.train --config configs/baseline.json --out runs/ddp
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifar.callbacks import (
    Callback,
    Checkpointer,
    ConsoleLogger,
    CsvLogger,
    EarlyStopping,
    StopTraining,
    TensorBoardLogger,
    load_checkpoint,
)
from cifar.config import TrainConfig, apply_overrides
from cifar.data import CifarData, Pipeline, prepare_data
from cifar.model import SmallCNN, model_cost

CHECK_EVERY = 25  # steps between divergence checks on a GPU


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainResult:
    status: str             # completed | early_stopped | diverged
    message: str            # why it ended, in words
    best_val_acc: float
    best_epoch: int
    epochs_run: int
    train_seconds: float
    params: int
    flops: int              # forward FLOPs per image
    run_dir: str


# ---------------------------------------------------------------- setup


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    # cuDNN picks the fastest convolution algorithms for our fixed shapes (not bit-reproducible).
    torch.backends.cudnn.benchmark = not deterministic


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:  # one GPU per torchrun process
        name = f"cuda:{os.environ['LOCAL_RANK']}"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
    return device


def cpu_has_native_bf16() -> bool:
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for --amp on this device, or None for fp32."""
    if mode == "off":
        return None
    if device.type == "cuda":
        if mode == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if mode == "bf16" else torch.float16
    if mode == "fp16":
        raise ValueError("--amp fp16 needs CUDA; on a CPU use --amp bf16 (where supported) or off")
    if mode == "bf16" and not cpu_has_native_bf16():
        raise ValueError("--amp bf16 on CPU needs native bf16 (AVX512-BF16 or AMX); "
                         "this CPU emulates it, which is slower than fp32: use --amp off")
    # auto on CPU stays fp32: bench/amp.py measures whether bf16 pays on a given CPU.
    return torch.bfloat16 if mode == "bf16" else None


@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when not distributed)."""
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Dist:
    """Join the torchrun job described by the environment (WORLD_SIZE, RANK, ...), once per process.

    gloo on CPU, nccl on CUDA; each rank uses the GPU numbered by LOCAL_RANK.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = device_name != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def is_distributed() -> bool:
    """Whether this process has joined a torchrun job (init_distributed ran with WORLD_SIZE > 1)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sums over ranks (values unchanged outside a distributed job)."""
    if not is_distributed():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    # Weight decay on conv and linear weights only, not on BatchNorm or biases.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum)


class LrSchedule:
    """Multiplier of the peak lr at optimizer step ``step`` (the schedule steps per batch)."""

    def __init__(self, kind: str, total_steps: int, warmup_steps: int):
        self.kind, self.total = kind, max(1, total_steps)
        self.warmup = min(warmup_steps, self.total - 1) if kind in ("onecycle", "cosine") else 0

    def __call__(self, step: int) -> float:
        if self.kind == "constant":
            return 1.0
        if self.kind == "step":  # x0.1 at half and at three quarters of the run
            return 0.1 ** ((step >= self.total // 2) + (step >= 3 * self.total // 4))
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        if self.kind == "onecycle":  # linear warmup, then linear decay to zero
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------- the loop


def train_one_epoch(model: nn.Module, batches: Pipeline, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
                    cfg: TrainConfig, autocast) -> dict[str, float]:
    model.train()
    # Sums stay on the device: reading a GPU value waits for the GPU, so it is read every
    # CHECK_EVERY steps there (every step on a CPU, where reading costs nothing).
    # In a distributed job the check waits for the epoch's reduced loss, so that every rank
    # stops at the same step (a rank that stopped alone would leave the others waiting).
    device = next(model.parameters()).device
    check_every = math.inf if is_distributed() else 1 if device.type == "cpu" else CHECK_EVERY
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    for step, (x, y) in enumerate(batches):
        with autocast():
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        loss_sum += loss.detach() * len(y)
        if (step + 1) % check_every == 0 and not math.isfinite(loss_value := loss_sum.item()):
            raise Diverged(f"training loss became {loss_value} by step {step + 1} of the epoch; "
                           f"lower lr (now {cfg.lr}) or set grad_clip")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    loss_total, correct_total, seen_total = all_reduce_sum([loss_sum.item(), correct.item(), seen], device)
    train_loss = loss_total / max(seen_total, 1)
    if not math.isfinite(train_loss):
        raise Diverged(f"training loss became {train_loss} in the epoch; lower lr (now {cfg.lr}) or set grad_clip")
    return {"train_loss": train_loss, "train_acc": correct_total / max(seen_total, 1)}


@torch.no_grad()
def predict(model: nn.Module, batches, autocast=nullcontext) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 logits and labels of every batch, on the CPU."""
    model.eval()
    logits, labels = [], []
    for x, y in batches:
        with autocast():
            logits.append(model(x).float().cpu())
        labels.append(y.cpu())
    if not logits:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.int64)
    return torch.cat(logits), torch.cat(labels)


def evaluate(model: nn.Module, batches, autocast=nullcontext) -> dict[str, float]:
    """Loss and accuracy over the batches; in a distributed job, over every rank's shard."""
    logits, labels = predict(model, batches, autocast)
    loss_sum = F.cross_entropy(logits, labels, reduction="sum").item() if len(labels) else 0.0
    correct = (logits.argmax(1) == labels).sum().item() if len(labels) else 0
    loss_sum, correct, n = all_reduce_sum([loss_sum, correct, len(labels)], next(model.parameters()).device)
    if n == 0:
        return {"loss": math.nan, "acc": math.nan}
    return {"loss": loss_sum / n, "acc": correct / n}


def provenance(data: CifarData, device: torch.device, params: int, flops: int) -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "git_commit": commit, "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__, "platform": platform.platform(), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "threads": torch.get_num_threads(), "data_source": data.source,
        "data_sizes": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "data_mean": data.mean, "data_std": data.std, "params": params, "flops": flops,
    }


def train(cfg: TrainConfig, data: CifarData, run_dir: str | Path,
          callbacks: Sequence[Callback] = (), resume: bool = False) -> TrainResult:
    """Train one model; everything about the run goes to ``run_dir``.

    Under torchrun (WORLD_SIZE > 1) every rank calls this: the model is wrapped in
    DistributedDataParallel, ``cfg.batch_size`` stays the global batch (each rank takes
    its share of it and of the validation split), metrics are reduced over ranks, and
    only rank 0 writes files and prints. ``callbacks`` run on every rank.
    """
    run_dir = Path(run_dir)
    rank = init_distributed(cfg.device)
    if cfg.batch_size % rank.world:
        raise ValueError(f"batch_size {cfg.batch_size} does not split over {rank.world} processes")
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    amp_dtype = resolve_amp(cfg.amp, device)
    seed_everything(cfg.seed, cfg.deterministic)

    net = SmallCNN(cfg.model)
    params, flops = model_cost(cfg.model)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    net = net.to(device, memory_format=fmt)
    model = net
    if rank.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    train_batches = Pipeline(data.train, cfg, data.mean, data.std, device, train=True, seed=cfg.seed,
                             rank=rank.rank, world=rank.world)
    val_batches = Pipeline(data.val, cfg, data.mean, data.std, device, train=False,
                           rank=rank.rank, world=rank.world)
    optimizer = build_optimizer(cfg, model)
    steps = len(train_batches)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, LrSchedule(cfg.schedule, cfg.epochs * steps, round(cfg.warmup_epochs * steps)))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()

    history: list[dict[str, float]] = []
    if resume:
        ckpt = load_checkpoint(run_dir / "last.pt")
        if ckpt["config"] != cfg.to_dict():
            raise ValueError(f"config differs from the one {run_dir / 'last.pt'} was trained with")
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        train_batches.load_state_dict(ckpt["pipeline"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if device.type == "cuda" and "cuda" in ckpt["rng"]:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
        history = ckpt["metrics"]

    if rank.is_main:
        info = provenance(data, device, params, flops) | {"processes": rank.world}
        (run_dir / "config.json").write_text(json.dumps({"config": cfg.to_dict(), "provenance": info},
                                                        indent=2) + "\n")

    def state() -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        return {"config": cfg.to_dict(), "model": net.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "pipeline": train_batches.state_dict(), "rng": rng,
                "epoch": len(history), "metrics": list(history), "classes": data.classes,
                "data_stats": {"mean": list(data.mean), "std": list(data.std)}}

    all_callbacks: list[Callback] = []
    if rank.is_main:
        all_callbacks += [ConsoleLogger(cfg.epochs), CsvLogger(run_dir / "metrics.csv", history),
                          Checkpointer(run_dir, state, history)]
        if cfg.tensorboard:
            all_callbacks.append(TensorBoardLogger(run_dir / "tensorboard"))
    all_callbacks += list(callbacks)
    if cfg.early_stop_patience:
        all_callbacks.append(EarlyStopping(cfg.early_stop_patience, history))

    if rank.is_main:
        procs = f" x {rank.world} processes" if rank.world > 1 else ""
        print(f"{params:,} parameters, {flops / 1e6:.1f} MFLOPs/image, {len(data.train):,} train / "
              f"{len(data.val):,} val images, device {device}{procs}, amp {amp_dtype or 'off'}", flush=True)
    status, message = "completed", f"ran all {cfg.epochs} epochs"
    elapsed = history[-1]["elapsed_seconds"] if history else 0.0
    try:
        for epoch in range(len(history) + 1, cfg.epochs + 1):
            start = time.perf_counter()
            metrics: dict[str, float] = {"epoch": epoch}
            metrics.update(train_one_epoch(model, train_batches, optimizer, scheduler, scaler, cfg, autocast))
            train_seconds = time.perf_counter() - start
            val = evaluate(net, val_batches, autocast)  # net: no DDP collectives on uneven shards
            metrics.update(val_loss=val["loss"], val_acc=val["acc"], lr=optimizer.param_groups[0]["lr"])
            epoch_seconds = time.perf_counter() - start
            elapsed += epoch_seconds
            metrics.update(epoch_seconds=epoch_seconds, elapsed_seconds=elapsed,
                           images_per_s=len(train_batches) * cfg.batch_size / train_seconds)
            history.append(metrics)
            for callback in all_callbacks:
                callback.on_epoch_end(epoch, metrics)
    except StopTraining as e:
        status, message = "early_stopped", str(e)
    except Diverged as e:
        status, message = "diverged", str(e)
    if status != "completed" and rank.is_main:
        print(f"{status}: {message}", file=sys.stderr, flush=True)

    scored = [r for r in history if not math.isnan(r["val_acc"])]
    best = max(scored, key=lambda r: r["val_acc"]) if scored else (history[-1] if history else None)
    result = TrainResult(
        status=status, message=message,
        best_val_acc=best["val_acc"] if best else math.nan, best_epoch=best["epoch"] if best else 0,
        epochs_run=len(history), train_seconds=elapsed, params=params, flops=flops, run_dir=str(run_dir))
    if rank.is_main:
        (run_dir / "results.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result


# ---------------------------------------------------------------- command line


USAGE = ("usage: python -m cifar.train [--config FILE.json] [--out RUN_DIR] [--resume RUN_DIR] "
         "[--KEY VALUE ...]")


def parse_args(argv: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Split argv into the command's own options and config overrides (--key value / --key=value)."""
    own, overrides = {}, {}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            raise SystemExit(print(USAGE + "\nKEY: any config field, e.g. --lr 0.1 --widths 32,64,128 "
                                   "(see cifar/config.py)") or 0)
        if not arg.startswith("--") or arg == "--":
            raise ValueError(f"unexpected argument {arg!r}; {USAGE}")
        key, sep, value = arg[2:].partition("=")
        if not sep:
            # A flag with no value (e.g. --deterministic) means true.
            value = args.pop(0) if args and not args[0].startswith("--") else "true"
        (own if key in ("config", "out", "resume") else overrides)[key] = value
    return own, overrides


def main(argv: Sequence[str] | None = None) -> int:
    try:
        own, overrides = parse_args(sys.argv[1:] if argv is None else argv)
        if "resume" in own:
            if overrides or "config" in own:
                raise ValueError("--resume takes the run's own config; give no other options")
            run_dir = Path(own["resume"])
            if not (run_dir / "last.pt").is_file():
                raise ValueError(f"cannot resume {run_dir}: it has no last.pt")
            cfg = TrainConfig.from_json(run_dir / "config.json")
        else:
            cfg = TrainConfig.from_json(own["config"]) if "config" in own else TrainConfig()
            cfg = apply_overrides(cfg, overrides)
            if "out" not in own and int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise ValueError("under torchrun, name the run directory with --out (every rank needs it)")
            run_dir = Path(own.get("out") or time.strftime("runs/%Y%m%d-%H%M%S"))
        data = prepare_data(cfg.data, download=True)
        result = train(cfg, data, run_dir, resume="resume" in own)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with: python -m cifar.train --resume RUN_DIR", file=sys.stderr)
        return 130
    if init_distributed(cfg.device).is_main:
        print(f"{result.status}: best val_acc {result.best_val_acc:.4f} at epoch {result.best_epoch}, "
              f"{result.train_seconds:.0f} s; run in {result.run_dir}")
    if is_distributed():
        torch.distributed.destroy_process_group()
    return 1 if result.status == "diverged" else 0


if __name__ == "__main__":
    sys.exit(main())
