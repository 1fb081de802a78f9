"""One epoch of training and one pass of evaluation: the steps ``cifar.train`` repeats.

``train_one_epoch`` is the plain step sequence (forward, loss, zero_grad,
backward, clip, step, schedule) and raises ``Diverged`` when the loss stops
being finite; ``predict`` and ``evaluate`` run a model over batches without
gradients. Under torchrun, sums are reduced over ranks so every rank sees the
same metrics.

Usage:
    metrics = train_one_epoch(model, batches, optimizer, scheduler, scaler, cfg, autocast)
    val = evaluate(model, val_batches, autocast)   # {"loss": ..., "acc": ...}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from cifar.config import TrainConfig
from cifar.runtime import all_reduce_sum, is_distributed

CHECK_EVERY = 25  # steps between divergence checks on a GPU

Autocast = Callable[[], AbstractContextManager]
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


def train_one_epoch(model: nn.Module, batches: Batches, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
                    cfg: TrainConfig, autocast: Autocast,
                    after_step: Callable[[int], None] | None = None) -> dict[str, float]:
    """One pass over ``batches``; ``after_step(n)`` runs after optimizer step n of the run (lookahead)."""
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
        if after_step:
            after_step(scheduler.last_epoch)  # LambdaLR counts every step of the run
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    loss_total, correct_total, seen_total = all_reduce_sum([loss_sum.item(), correct.item(), seen], device)
    train_loss = loss_total / max(seen_total, 1)
    if not math.isfinite(train_loss):
        raise Diverged(f"training loss became {train_loss} in the epoch; lower lr (now {cfg.lr}) or set grad_clip")
    return {"train_loss": train_loss, "train_acc": correct_total / max(seen_total, 1)}


@torch.no_grad()
def predict(model: nn.Module, batches: Batches, autocast: Autocast = nullcontext) -> tuple[torch.Tensor, torch.Tensor]:
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


def evaluate(model: nn.Module, batches: Batches, autocast: Autocast = nullcontext) -> dict[str, float]:
    """Loss and accuracy over the batches; in a distributed job, over every rank's shard."""
    logits, labels = predict(model, batches, autocast)
    loss_sum = F.cross_entropy(logits, labels, reduction="sum").item() if len(labels) else 0.0
    correct = (logits.argmax(1) == labels).sum().item() if len(labels) else 0
    loss_sum, correct, n = all_reduce_sum([loss_sum, correct, len(labels)], next(model.parameters()).device)
    if n == 0:
        return {"loss": math.nan, "acc": math.nan}
    return {"loss": loss_sum / n, "acc": correct / n}
