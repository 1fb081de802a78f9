"""Training: build a run's parts, restore them from a checkpoint, run the epochs, write the run.

``train(cfg, data, run_dir)`` builds the parts (model, batches, optimizer,
schedule), restores them from ``last.pt`` when resuming, and repeats
``cifar.loop.train_one_epoch`` and validation, handing each epoch's metrics to
callbacks: console and CSV logging, checkpoints, early stopping, optional
TensorBoard, and whatever the caller adds (the study adds Optuna pruning).
Everything about the run goes to its run directory (``cifar.rundir``).

Usage:
    python -m cifar.train --config configs/smallcnn.json --out runs/smallcnn
    python -m cifar.train --epochs 5 --lr 0.1 --optimizer adamw --dropout 0.2
    python -m cifar.train --resume runs/smallcnn
    torchrun --standalone --nproc_per_node=2 -m cifar.train --config configs/smallcnn.json --out runs/ddp
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifar.callbacks import (
    Callback,
    Checkpointer,
    ConsoleLogger,
    CsvLogger,
    EarlyStopping,
    StopTraining,
    TensorBoardLogger,
)
from cifar.cli import fail, parse_args
from cifar.config import TrainConfig, apply_overrides
from cifar.data import CifarData, prepare_data
from cifar.loop import Diverged, evaluate, train_one_epoch
from cifar.model import build_model, model_cost
from cifar.optim import Lookahead, build_optimizer, build_scheduler
from cifar.pipeline import Normalize, Pipeline
from cifar.rundir import DiskFull, RunDir, TrainResult, load_checkpoint
from cifar.runtime import (
    Dist,
    autocast_factory,
    describe_runtime,
    init_distributed,
    keep_freed_memory,
    launched_by_torchrun,
    leave_distributed,
    resolve_amp,
    resolve_device,
    return_freed_memory,
    seed_everything,
)

CHECKPOINT_SECONDS = 30.0  # at most this much training is lost when a run is killed part-way
WHITEN_IMAGES = 5000  # train images whose 2x2 patches fit the whitening stem


@dataclass
class Parts:
    """Everything a run's epochs use, built once per run."""
    net: nn.Module                 # the model whose weights checkpoints hold
    model: nn.Module               # net, or its DistributedDataParallel wrapper
    train_batches: Pipeline
    val_batches: Pipeline
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    autocast: Callable[[], AbstractContextManager]
    device: torch.device
    amp_dtype: torch.dtype | None
    rank: Dist
    params: int
    flops: int                     # forward FLOPs per image
    lookahead: Lookahead | None
    malloc: str                    # what keep_freed_memory did (provenance)


def build_parts(cfg: TrainConfig, data: CifarData, rank: Dist) -> Parts:
    """Seed, then build in a fixed order (the order fixes what the seed gives each part)."""
    device = resolve_device(cfg.device)
    amp_dtype = resolve_amp(cfg.amp, device)
    malloc = return_freed_memory(device) if cfg.low_memory else keep_freed_memory(device)
    seed_everything(cfg.seed, cfg.deterministic)
    net = build_model(cfg, device)
    params, flops = model_cost(cfg.model)
    if net.whitening is not None:  # fitted to the train split, before any training step
        normalize = Normalize(data.mean, data.std).to(device)
        net.whitening.fit_once(data.train.x, (data.mean, data.std, str(device)),
                               lambda: normalize(data.train.x[:WHITEN_IMAGES].to(device)))
    model = net
    if rank.world > 1:
        if net.whitening is not None and cfg.whiten_bias_epochs:
            raise ValueError("whiten_bias_epochs freezes a parameter mid-run, which DDP does not allow; "
                             "set it to 0 under torchrun")
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    train_batches = Pipeline(data.train, cfg, data.mean, data.std, device, train=True, seed=cfg.seed,
                             rank=rank.rank, world=rank.world)
    val_batches = Pipeline(data.val, cfg, data.mean, data.std, device, train=False,
                           rank=rank.rank, world=rank.world)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, len(train_batches))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    lookahead = Lookahead(cfg, net, cfg.epochs * len(train_batches)) if cfg.lookahead else None
    return Parts(net, model, train_batches, val_batches, optimizer, scheduler, scaler,
                 autocast_factory(device, amp_dtype), device, amp_dtype, rank, params, flops, lookahead, malloc)


def restore(parts: Parts, cfg: TrainConfig, run: RunDir) -> list[dict[str, float]]:
    """Load last.pt into the parts (weights, optimizer, schedule, data order, RNG); its history."""
    ckpt = load_checkpoint(run.last)
    if ckpt["config"] != cfg.to_dict():
        raise ValueError(f"config differs from the one {run.last} was trained with")
    parts.net.load_state_dict(ckpt["model"])
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    parts.scheduler.load_state_dict(ckpt["scheduler"])
    parts.scaler.load_state_dict(ckpt["scaler"])
    parts.train_batches.load_state_dict(ckpt["pipeline"])
    if parts.lookahead:
        parts.lookahead.load_state_dict(ckpt["lookahead"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if parts.device.type == "cuda" and "cuda" in ckpt["rng"]:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"], parts.device)
    return ckpt["metrics"]


def checkpoint_state(parts: Parts, cfg: TrainConfig, data: CifarData,
                     history: list[dict[str, float]]) -> dict[str, Any]:
    """What last.pt holds: enough to continue the run exactly, or to rebuild the model alone."""
    rng = {"torch": torch.get_rng_state()}
    if parts.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(parts.device)
    return {"config": cfg.to_dict(), "model": parts.net.state_dict(),
            "optimizer": parts.optimizer.state_dict(), "scheduler": parts.scheduler.state_dict(),
            "scaler": parts.scaler.state_dict(), "pipeline": parts.train_batches.state_dict(), "rng": rng,
            "epoch": len(history), "metrics": list(history), "classes": data.classes,
            "data_stats": {"mean": list(data.mean), "std": list(data.std)},
            "lookahead": parts.lookahead.state_dict() if parts.lookahead else None}


def provenance(data: CifarData, parts: Parts) -> dict[str, Any]:
    return describe_runtime(parts.device) | {
        "data_source": data.source,
        "data_sizes": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "data_mean": data.mean, "data_std": data.std, "params": parts.params, "flops": parts.flops,
        "processes": parts.rank.world, "malloc": parts.malloc,
    }


def run_epoch(parts: Parts, cfg: TrainConfig, epoch: int, elapsed: float) -> dict[str, float]:
    """Train one epoch, validate, and time both (``elapsed``: the run's seconds before it)."""
    start = time.perf_counter()
    whitening = parts.net.whitening
    if whitening is not None and cfg.whiten_bias_epochs:
        whitening.bias.requires_grad_(epoch <= cfg.whiten_bias_epochs)
    metrics: dict[str, float] = {"epoch": epoch}
    metrics.update(train_one_epoch(parts.model, parts.train_batches, parts.optimizer, parts.scheduler,
                                   parts.scaler, cfg, parts.autocast,
                                   parts.lookahead.step if parts.lookahead else None))
    if parts.lookahead:
        parts.lookahead.sync()
    train_seconds = time.perf_counter() - start
    val = evaluate(parts.net, parts.val_batches, parts.autocast)  # net: no DDP collectives on uneven shards
    metrics.update(val_loss=val["loss"], val_acc=val["acc"], lr=parts.optimizer.param_groups[0]["lr"])
    epoch_seconds = time.perf_counter() - start
    metrics.update(epoch_seconds=epoch_seconds, elapsed_seconds=elapsed + epoch_seconds,
                   images_per_s=len(parts.train_batches) * cfg.batch_size / train_seconds)
    return metrics


def train(cfg: TrainConfig, data: CifarData, run_dir: str | Path,
          callbacks: Sequence[Callback] = (), resume: bool = False, quiet: bool = False,
          checkpoint_seconds: float = CHECKPOINT_SECONDS) -> TrainResult:
    """Train one model; everything about the run goes to ``run_dir``.

    ``quiet``: no line per epoch on the console (a study prints one line per trial instead).
    ``checkpoint_seconds``: last.pt and best.pt are written after the first epoch, then at most this
    often, and at the end (``Checkpointer``); 0 writes them after every epoch.

    Under torchrun (WORLD_SIZE > 1) every rank calls this: the model is wrapped in
    DistributedDataParallel, ``cfg.batch_size`` stays the global batch (each rank takes
    its share of it and of the validation split), metrics are reduced over ranks, and
    only rank 0 writes files and prints. ``callbacks`` run on every rank.
    """
    run = RunDir(run_dir)
    rank = init_distributed(cfg.device)
    if cfg.batch_size % rank.world:
        raise ValueError(f"batch_size {cfg.batch_size} does not split over {rank.world} processes")
    run.path.mkdir(parents=True, exist_ok=True)
    parts = build_parts(cfg, data, rank)
    history = restore(parts, cfg, run) if resume else []
    every: list[Callback] = []
    checkpointer = None
    if rank.is_main:
        run.write_config(cfg, provenance(data, parts))
        every += [] if quiet else [ConsoleLogger(cfg.epochs)]
        checkpointer = Checkpointer(run, lambda: checkpoint_state(parts, cfg, data, history), history,
                                    every_seconds=checkpoint_seconds)
        every += [CsvLogger(run.history, history), checkpointer]
        if cfg.tensorboard:
            every.append(TensorBoardLogger(run.tensorboard))
        procs = f" x {rank.world} processes" if rank.world > 1 else ""
        if not quiet:
            print(f"{parts.params:,} parameters, {parts.flops / 1e6:.1f} MFLOPs/image, {len(data.train):,} train / "
                  f"{len(data.val):,} val images, device {parts.device}{procs}, amp {parts.amp_dtype or 'off'}",
                  flush=True)
    every += list(callbacks)
    if cfg.early_stop_patience:
        every.append(EarlyStopping(cfg.early_stop_patience, history))

    status, message = "completed", f"ran all {cfg.epochs} epochs"
    try:
        for epoch in range(len(history) + 1, cfg.epochs + 1):
            history.append(run_epoch(parts, cfg, epoch, history[-1]["elapsed_seconds"] if history else 0.0))
            for callback in every:
                callback.on_epoch_end(epoch, history[-1])
    except StopTraining as e:
        status, message = "early_stopped", str(e)
    except Diverged as e:
        status, message = "diverged", str(e)
    if checkpointer:  # after a diverged epoch the weights are not that of any epoch worth keeping
        checkpointer.finish(at_last_epoch=status != "diverged")
    if status != "completed" and rank.is_main and not quiet:
        print(f"{status}: {message}", file=sys.stderr, flush=True)

    scored = [r for r in history if not math.isnan(r["val_acc"])]
    best = max(scored, key=lambda r: r["val_acc"]) if scored else (history[-1] if history else None)
    result = TrainResult(
        status=status, message=message,
        best_val_acc=best["val_acc"] if best else math.nan, best_epoch=best["epoch"] if best else 0,
        epochs_run=len(history), train_seconds=history[-1]["elapsed_seconds"] if history else 0.0,
        params=parts.params, flops=parts.flops,
        run_dir=str(run_dir))
    if rank.is_main:
        run.write_results(result)
    return result


# ---------------------------------------------------------------- command line


USAGE = ("usage: python -m cifar.train [--config FILE.json] [--out RUN_DIR] [--resume RUN_DIR] "
         "[--set KEY=VALUE ...] [--KEY VALUE ...]")
TRAIN_HELP = """Train one model; everything about the run goes to its run folder.
  --config FILE.json   start from this config (default: the values below, the SmallCNN of the original task
                       = configs/smallcnn.json; the fast recipe is configs/fast.json)
  --out RUN_DIR        the run folder (default: runs/<date>-<time>)
  --resume RUN_DIR     continue a stopped run from its last.pt, with its own config
  --set KEY=VALUE      set a config key (repeatable); --KEY VALUE says the same"""


def main(argv: Sequence[str] | None = None) -> int:
    try:
        own, overrides = parse_args(sys.argv[1:] if argv is None else argv, USAGE, TRAIN_HELP,
                                    own=("config", "out", "resume"))
        if "resume" in own:
            if overrides or "config" in own:
                raise ValueError("--resume takes the run's own config; give no other options")
            run = RunDir(own["resume"])
            if not run.last.is_file():
                raise ValueError(f"cannot resume {run}: it has no {run.last.name}")
            cfg = run.read_config()
        else:
            cfg = TrainConfig.from_json(own["config"]) if "config" in own else TrainConfig()
            cfg = apply_overrides(cfg, overrides)
            if "out" not in own and launched_by_torchrun():
                raise ValueError("under torchrun, name the run directory with --out (every rank needs it)")
            run = RunDir(own.get("out") or time.strftime("runs/%Y%m%d-%H%M%S"))
        data = prepare_data(cfg.data, download=True)
        result = train(cfg, data, run.path, resume="resume" in own)
    except ValueError as e:
        return fail(e)
    except DiskFull as e:  # not bad input: exit 1, one line, the last checkpoint kept
        print(f"error: {e.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; resume with: python -m cifar.train --resume RUN_DIR", file=sys.stderr)
        return 130
    if init_distributed(cfg.device).is_main:
        print(f"{result.status}: best val_acc {result.best_val_acc:.4f} at epoch {result.best_epoch}, "
              f"{result.train_seconds:.0f} s; run in {result.run_dir}")
    leave_distributed()
    return 1 if result.status == "diverged" else 0


if __name__ == "__main__":
    sys.exit(main())
