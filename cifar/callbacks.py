"""Epoch-end callbacks: console and CSV logging, TensorBoard, early stopping, checkpoints.

A callback is anything with ``on_epoch_end(epoch, metrics)``; it stops a run by
raising ``StopTraining``. The files they write are the run directory's
(``cifar.rundir``).

Usage:
    callbacks = [CsvLogger(RunDir(path).history), EarlyStopping(patience=5)]
"""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from cifar.rundir import RunDir, save_checkpoint


class Callback(Protocol):
    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None: ...


class StopTraining(Exception):
    """Raised by a callback to end the run after the current epoch; the message says why."""


# ---------------------------------------------------------------- callbacks


class CsvLogger:
    """Appends one row per epoch to metrics.csv (rewritten from history on resume)."""

    def __init__(self, path: Path, history: list[dict[str, float]] = ()):
        self.path = path
        self.columns: list[str] | None = None
        rows = list(history)
        if rows:  # drop any rows after the checkpoint we resume from
            self.columns = list(rows[0])
            with path.open("w", newline="") as f:
                writer = csv.DictWriter(f, self.columns)
                writer.writeheader()
                writer.writerows(rows)
        elif path.exists():
            path.unlink()

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        new = self.columns is None
        self.columns = self.columns or list(metrics)
        with self.path.open("a", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            if new:
                writer.writeheader()
            writer.writerow(metrics)


class ConsoleLogger:
    """One line per epoch: metrics, throughput, and the ETA of the run."""

    def __init__(self, epochs: int, stream=sys.stdout):
        self.epochs, self.stream = epochs, stream

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        left = (self.epochs - epoch) * metrics["epoch_seconds"]
        print(f"epoch {epoch:3d}/{self.epochs}  "
              f"train_loss {metrics['train_loss']:.4f}  train_acc {metrics['train_acc']:.4f}  "
              f"val_loss {metrics['val_loss']:.4f}  val_acc {metrics['val_acc']:.4f}  "
              f"lr {metrics['lr']:.4g}  {metrics['images_per_s']:.0f} img/s  "
              f"{metrics['epoch_seconds']:.1f} s  ETA {_clock(left)}", file=self.stream, flush=True)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class TensorBoardLogger:
    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            if key != "epoch":
                self.writer.add_scalar(key, value, epoch)
        self.writer.flush()


class EarlyStopping:
    """Stops after ``patience`` epochs without a new best ``val_acc``."""

    def __init__(self, patience: int, history: list[dict[str, float]] = ()):
        self.patience = patience
        self.best, self.since_best = -math.inf, 0
        for row in history:  # a resumed run continues its count
            self._update(row["val_acc"])

    def _update(self, val_acc: float) -> None:
        if val_acc > self.best:
            self.best, self.since_best = val_acc, 0
        else:
            self.since_best += 1

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self._update(metrics["val_acc"])
        if self.since_best >= self.patience:
            raise StopTraining(f"early stop: no val_acc above {self.best:.4f} for {self.patience} epochs")


class Checkpointer:
    """Writes last.pt every epoch and best.pt whenever val_acc improves (or has no val set)."""

    def __init__(self, run_dir: RunDir, get_state: Callable[[], dict[str, Any]],
                 history: list[dict[str, float]] = ()):
        self.run_dir, self.get_state = run_dir, get_state
        self.best = max((r["val_acc"] for r in history), default=-math.inf)

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        state = self.get_state()
        save_checkpoint(self.run_dir.last, state)
        val_acc = metrics["val_acc"]
        if math.isnan(val_acc) or val_acc > self.best:
            self.best = val_acc
            keep = ("config", "model", "epoch", "metrics", "data_stats", "classes")
            save_checkpoint(self.run_dir.best, {k: state[k] for k in keep})
