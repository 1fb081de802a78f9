"""Fitting a preset's budget to the machine: measure the model's speed, then size the trials.

The CPU preset promises a study of 30 trials within an hour and a report within
about an hour and a half. 2-core machines differ by 4x in how fast they train
the baseline model, so a fixed budget cannot keep that promise on all of them.
When a study is created, ``measure_throughput`` times a few training and
evaluation steps of the base config on synthetic images, and ``size_trials``
picks the largest trial budget (epochs, share of the train split) that fits the
preset's minutes: first the share shrinks, and below the preset's floor the
epochs drop by one Hyperband rung (a factor of 3). The measurement is stored in
the study, so a resumed study keeps its budget and the report sizes its own
retraining from the same figures (``report_epochs``).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from cifar.config import TrainConfig
from cifar.model import SmallCNN
from cifar.optim import build_optimizer
from cifar.runtime import resolve_device
from study.storage import REDUCTION_FACTOR

CIFAR10_TRAIN_IMAGES = 50_000
# Mean epochs a trial runs over its maximum under Hyperband (reduction factor 3),
# as measured in 30-trial studies: 0.66 with 9 epochs (rungs 1, 3, 9; study
# cifar-cpu) and 0.84 with 3 (rungs 1, 3; study cifar-cpu-sized).
EPOCH_SHARE = {9: 0.7, 3: 0.85, 1: 1.0}
TRIAL_OVERHEAD_S = 5.0   # per trial: model build, checkpoints, curve PNG, storage writes
STARTUP_S = 60.0         # per study: imports, data loading, worker start


@dataclass(frozen=True)
class Throughput:
    train: float  # training images/s of the base config (forward, backward, step)
    eval: float   # evaluation images/s (forward only, eval batch size)
    device: str


@dataclass(frozen=True)
class TrialBudget:
    epochs: int
    train_fraction: float
    warmup_epochs: float
    minutes: float  # the estimate of the whole study at this budget


def measure_throughput(cfg: TrainConfig, seconds: float = 6.0) -> Throughput:
    """Images/s of the base config's training and evaluation steps on synthetic 32x32 images."""
    device = resolve_device(cfg.device)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = SmallCNN(cfg.model).to(device, memory_format=fmt)
    optimizer = build_optimizer(cfg, model)

    def rate(batch: int, step) -> float:
        x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
        y = torch.randint(0, cfg.model.num_classes, (batch,), device=device)
        step(x, y)  # warm-up: allocator, kernels, cuDNN autotuning
        done, started = 0, time.perf_counter()
        while done == 0 or time.perf_counter() - started < seconds / 2:
            step(x, y)
            done += batch
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return done / (time.perf_counter() - started)

    def train_step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    def eval_step(x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.no_grad():
            model(x)

    model.train()
    train = rate(cfg.batch_size, train_step)
    model.eval()
    return Throughput(train=train, eval=rate(cfg.eval_batch_size, eval_step), device=str(device))


def epoch_share(epochs: int) -> float:
    """The measured share for the nearest maximum at or below ``epochs`` (one epoch: nothing to prune)."""
    return EPOCH_SHARE[max(k for k in EPOCH_SHARE if k <= epochs)]


def epoch_seconds(tp: Throughput, n_train: float, n_val: int) -> float:
    return n_train / tp.train + n_val / tp.eval


def size_trials(tp: Throughput, base: TrainConfig, n_trials: int, minutes: float,
                min_fraction: float) -> TrialBudget:
    """The largest (epochs, fraction) up to the base config's that fits ``n_trials`` in ``minutes``."""
    n_split = CIFAR10_TRAIN_IMAGES - base.data.val_size
    n_val = base.data.val_size
    seconds = minutes * 60 - STARTUP_S - n_trials * TRIAL_OVERHEAD_S
    epochs = base.epochs
    min_fraction = min(min_fraction, base.data.train_fraction)  # a base config's own small share is kept
    while True:
        per_epoch = seconds / (n_trials * epoch_share(epochs) * epochs)
        fraction = min(base.data.train_fraction, (per_epoch - n_val / tp.eval) * tp.train / n_split)
        if fraction >= min_fraction or epochs == 1:
            break
        epochs = max(1, epochs // REDUCTION_FACTOR)
    fraction = round(max(fraction, 0.01), 3)
    estimate = STARTUP_S + n_trials * (TRIAL_OVERHEAD_S + epoch_share(epochs) * epochs
                                       * epoch_seconds(tp, fraction * n_split, n_val))
    # The schedule keeps its shape: the warm-up stays the same share of the run.
    warmup = round(base.warmup_epochs * epochs / base.epochs, 3)
    return TrialBudget(epochs=epochs, train_fraction=fraction, warmup_epochs=warmup, minutes=estimate / 60)


def report_epochs(tp: Throughput, base: TrainConfig, runs: int, minutes: float, ceiling: int) -> int:
    """Epochs per retrained run (whole train split) so that ``runs`` of them fit in ``minutes``."""
    n_split = CIFAR10_TRAIN_IMAGES - base.data.val_size
    test_s = 10_000 / tp.eval
    per_run = (minutes * 60 - STARTUP_S) / runs - TRIAL_OVERHEAD_S - test_s
    return max(1, min(ceiling, math.floor(per_run / epoch_seconds(tp, n_split, base.data.val_size))))


def to_attr(tp: Throughput) -> dict:
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in asdict(tp).items()}


def from_attr(d: dict | None) -> Throughput | None:
    return Throughput(**d) if d else None
