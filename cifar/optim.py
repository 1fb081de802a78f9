"""Optimizers and learning-rate schedules, as name -> builder registries.

The config's choices (``TrainConfig.optimizer``, ``TrainConfig.schedule``) are
the keys of ``OPTIMIZERS`` and ``SCHEDULES``: adding an optimizer is one
registered function here. Weight decay applies to conv and linear weights only,
never to BatchNorm parameters or biases. Schedules are multipliers of the peak
learning rate, stepped once per batch.

Usage:
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch=len(batches))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cifar.registry import Registry

if TYPE_CHECKING:
    from cifar.config import TrainConfig

ParamGroups = list[dict[str, Any]]
OPTIMIZERS: Registry[Callable[[ParamGroups, TrainConfig], torch.optim.Optimizer]] = Registry("optimizer")


@OPTIMIZERS.register("sgd")
def _sgd(groups: ParamGroups, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


@OPTIMIZERS.register("adam")
def _adam(groups: ParamGroups, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=cfg.lr)


@OPTIMIZERS.register("adamw")
def _adamw(groups: ParamGroups, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr)


@OPTIMIZERS.register("rmsprop")
def _rmsprop(groups: ParamGroups, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(groups, lr=cfg.lr, momentum=cfg.momentum)


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    # Weight decay on conv and linear weights only, not on BatchNorm or biases.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return OPTIMIZERS.get(cfg.optimizer)(groups, cfg)


# ---------------------------------------------------------------- schedules


def _progress(step: int, steps: int) -> float:
    return min(1.0, step / max(1, steps))


@dataclass(frozen=True)
class Shape:
    """A schedule: the multiplier at ``step`` of the ``steps`` after the warm-up."""
    multiplier: Callable[[int, int], float]
    warms_up: bool  # whether warmup_epochs applies (a linear ramp before the shape)


def _onecycle(step: int, steps: int) -> float:  # after a linear warm-up: linear decay to zero
    return 1.0 - _progress(step, steps)


def _cosine(step: int, steps: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * _progress(step, steps)))


def _step(step: int, steps: int) -> float:  # x0.1 at half and at three quarters of the run
    return 0.1 ** ((step >= steps // 2) + (step >= 3 * steps // 4))


def _constant(step: int, steps: int) -> float:
    return 1.0


SCHEDULES: Registry[Shape] = Registry("schedule", {
    "onecycle": Shape(_onecycle, warms_up=True),
    "cosine": Shape(_cosine, warms_up=True),
    "step": Shape(_step, warms_up=False),
    "constant": Shape(_constant, warms_up=False),
})


class LrSchedule:
    """Multiplier of the peak lr at optimizer step ``step`` (the schedule steps per batch).

    Its attributes are plain values: LambdaLR's state_dict (in every checkpoint) holds them.
    """

    def __init__(self, kind: str, total_steps: int, warmup_steps: int):
        self.kind, self.total = kind, max(1, total_steps)
        self.warmup = min(warmup_steps, self.total - 1) if SCHEDULES.get(kind).warms_up else 0

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        return SCHEDULES.get(self.kind).multiplier(step - self.warmup, self.total - self.warmup)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    schedule = LrSchedule(cfg.schedule, cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
