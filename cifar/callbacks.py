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
import time
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
    """Writes last.pt, and best.pt with the weights of the best val_acc so far (every epoch, where there
    is no validation set), after the run's first epoch in this process, then at most every
    ``every_seconds`` (0: after every epoch), and what is left when the run ends (``finish``).

    On a CPU an epoch outlasts the interval, so both are written every epoch. On a GPU the fast recipe's
    epoch takes well under a second and each write a few hundredths, so writing every epoch would add a
    tenth to a short run; there a run killed part-way loses at most ``every_seconds`` of training. The
    best weights wait as a copy until the next write, so best.pt always holds the best epoch's."""

    BEST_KEYS = ("config", "model", "epoch", "metrics", "data_stats", "classes")

    def __init__(self, run_dir: RunDir, get_state: Callable[[], dict[str, Any]],
                 history: list[dict[str, float]] = (), every_seconds: float = 0.0):
        self.run_dir, self.get_state, self.every = run_dir, get_state, every_seconds
        self.best = max((r["val_acc"] for r in history), default=-math.inf)
        self.best_state: dict[str, Any] | None = None  # best.pt's content, not written yet
        self.written_at: float | None = None            # when last.pt was last written by this process
        self.behind = False                              # epochs have ended since then

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        state = None
        val_acc = metrics["val_acc"]
        if math.isnan(val_acc) or val_acc > self.best:
            self.best, state = val_acc, self.get_state()
            # a copy: training goes on changing the weights that the state dict shares
            self.best_state = {k: state[k] for k in self.BEST_KEYS} | {
                "model": {k: v.detach().clone() for k, v in state["model"].items()}}
        self.behind = True
        if self.written_at is None or time.perf_counter() - self.written_at >= self.every:
            self._write(state or self.get_state())

    def finish(self, at_last_epoch: bool = True) -> None:
        """Write what waits: best.pt's weights, and last.pt if the model is still at the state of the
        last epoch that ended (not after a diverged one)."""
        if self.behind and at_last_epoch:
            self._write(self.get_state())
        else:
            self._write_best()

    def _write(self, state: dict[str, Any]) -> None:
        save_checkpoint(self.run_dir.last, state)
        self._write_best()
        self.written_at, self.behind = time.perf_counter(), False

    def _write_best(self) -> None:
        if self.best_state is not None:
            save_checkpoint(self.run_dir.best, self.best_state)
            self.best_state = None
