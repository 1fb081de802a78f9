"""Fitting a study to the machine: measure the model's speed, then size the main job.

2-core machines differ by 4x in how fast they train, so a fixed number of trials
cannot keep a promise about the main job's time on all of them. When a study is
created, ``measure_throughput`` times a few training and evaluation steps of the
base config (at its target) on synthetic images, and ``size_study`` picks the
number of trials that, with the report's retraining after it, fits the preset's
minutes. The measurement is stored in the study, so a resumed study keeps its size.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from cifar.config import TrainConfig
from cifar.model import build_model
from cifar.optim import build_optimizer
from cifar.runtime import keep_freed_memory, memory_format, resolve_device
from study.pruning import epoch_share

CIFAR10_TRAIN_IMAGES = 50_000
CIFAR10_TEST_IMAGES = 10_000
TEST_VIEWS = 7            # a test evaluation: plain, then TTA's 6 views (mirror x 1-pixel translates)
TRIAL_OVERHEAD_S = 5.0   # per run: model build, checkpoints, curve PNG, storage writes
STARTUP_S = 60.0         # per command: imports, data loading, worker start
# Steps before and in the timing. One warm-up step and 3 s (one or two steps at batch 1024) measured
# the fast recipe at 374 images/s on a machine where its epochs then ran at 424-526 (the reference job).
WARMUP_STEPS, MEASURED_STEPS = 2, 3


@dataclass(frozen=True)
class Throughput:
    train: float  # training images/s of the base config (forward, backward, step)
    eval: float   # evaluation images/s (forward only, eval batch size)
    device: str


@dataclass(frozen=True)
class StudySize:
    n_trials: int
    fit: int                # the trials that fit the minutes, before the preset's bounds
    run_minutes: float      # one target run (training, validation every epoch)
    study_minutes: float    # the study's estimate
    report_runs: int        # the runs the report trains at most (the race's every round, the comparison's last look)
    report_minutes: float   # the report's estimate (its runs and the test evaluations)


def measure_throughput(cfg: TrainConfig, seconds: float = 6.0) -> Throughput:
    """Images/s of the base config's training and evaluation steps on synthetic 32x32 images."""
    device = resolve_device(cfg.device)
    keep_freed_memory(device)  # as the runs it sizes do
    fmt = memory_format(cfg)
    model = build_model(cfg, device)
    optimizer = build_optimizer(cfg, model)

    def rate(batch: int, step) -> float:
        x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
        y = torch.randint(0, cfg.model.num_classes, (batch,), device=device)
        for _ in range(WARMUP_STEPS):  # allocator, kernels, cuDNN autotuning
            step(x, y)
        done, started = 0, time.perf_counter()
        while done < MEASURED_STEPS * batch or time.perf_counter() - started < seconds / 2:
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


def run_seconds(tp: Throughput, base: TrainConfig) -> float:
    """One run of ``base``: its epochs on its share of the train split, validation after each."""
    n_train = (CIFAR10_TRAIN_IMAGES - base.data.val_size) * base.data.train_fraction
    return TRIAL_OVERHEAD_S + base.epochs * (n_train / tp.train + base.data.val_size / tp.eval)


def size_study(tp: Throughput, base: TrainConfig, minutes: float, min_trials: int, max_trials: int,
               candidates: int, race_rounds: int, pairs: int, pruner: str = "hyperband") -> StudySize:
    """The most trials (``min_trials`` to ``max_trials``) such that the study, then its report,
    fit in ``minutes`` at the report's most: a race of ``candidates`` configs and the baseline over
    ``race_rounds`` fresh seeds with no one knocked out, then a comparison that goes to its last look,
    ``pairs`` seeds of the baseline and the winner, each tested. A trial costs the share of a target
    run that ``pruner`` leaves it (``epoch_share``)."""
    run = run_seconds(tp, base)
    report_runs = (candidates + 1) * race_rounds + 2 * pairs
    report = STARTUP_S + report_runs * run + 2 * pairs * CIFAR10_TEST_IMAGES * TEST_VIEWS / tp.eval
    per_trial = epoch_share(base.epochs, pruner) * run
    fit = math.floor((minutes * 60 - STARTUP_S - report) / per_trial)
    n_trials = max(min_trials, min(max_trials, fit))
    return StudySize(n_trials=n_trials, fit=fit, run_minutes=run / 60,
                     study_minutes=(STARTUP_S + n_trials * per_trial) / 60, report_runs=report_runs,
                     report_minutes=report / 60)


def to_attr(tp: Throughput) -> dict:
    """The measurement as the study stores it (a user attribute): images/s to one decimal."""
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in asdict(tp).items()}
