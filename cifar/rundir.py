"""The run directory: its file names, and typed readers and writers for each file.

A run directory holds everything about one training run. This module is the
only place that knows the file names; everything else asks a ``RunDir``:

    config.json         the full config and its provenance (git commit, versions, data)
    metrics.csv         one row per epoch (the history)
    results.json        how the run ended (``TrainResult``)
    last.pt, best.pt    checkpoints: plain versioned dicts, written atomically
    test_metrics.json   test-set evaluation (``TestMetrics``), written by cifar.evaluate
    test_predictions.pt per-image test predictions (``Predictions``)
    plots/              curves, misclassified images, confusion matrix
    model.onnx, onnx_check.json   the ONNX export and its check against PyTorch

Usage:
    run = RunDir("runs/baseline")
    cfg, history = run.read_config(), run.read_history()
    model, cfg = model_from_checkpoint(load_checkpoint(run.best))
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from cifar import seal
from cifar.config import TrainConfig
from cifar.model import SmallCNN

CHECKPOINT_VERSION = 1
TIMING_COLUMNS = ("epoch_seconds", "elapsed_seconds", "images_per_s")  # differ between identical runs


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


@dataclass
class TestMetrics:
    test_loss: float
    test_acc: float
    n_test: int
    per_class_acc: dict[str, float]   # class name -> accuracy
    confusion: list[list[int]]        # rows: true class, columns: predicted class
    checkpoint_epoch: int = 0         # epoch of the evaluated checkpoint
    val_acc: float = math.nan         # its validation accuracy
    tta_level: int = 0                # test-time augmentation of the two fields below (0: none measured)
    test_acc_tta: float = math.nan
    test_loss_tta: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Predictions:
    """Per-image test predictions: for comparisons between runs."""
    pred: torch.Tensor    # int64 (N,) predicted class
    conf: torch.Tensor    # float (N,) its probability
    label: torch.Tensor   # int64 (N,) true class


class RunDir:
    """A run directory's files and their typed readers and writers."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # The files, by role.
    config = property(lambda self: self.path / "config.json")
    history = property(lambda self: self.path / "metrics.csv")
    results = property(lambda self: self.path / "results.json")
    last = property(lambda self: self.path / "last.pt")
    best = property(lambda self: self.path / "best.pt")
    test_metrics = property(lambda self: self.path / "test_metrics.json")
    predictions = property(lambda self: self.path / "test_predictions.pt")
    plots = property(lambda self: self.path / "plots")
    tensorboard = property(lambda self: self.path / "tensorboard")
    onnx = property(lambda self: self.path / "model.onnx")
    onnx_check = property(lambda self: self.path / "onnx_check.json")
    curves = property(lambda self: self.path / "curves.png")  # a study trial's small curve plot

    def __str__(self) -> str:
        return str(self.path)

    def missing(self, *files: Path) -> list[str]:
        """Names of the given files that do not exist."""
        return [f.name for f in files if not f.is_file()]

    def write_config(self, cfg: TrainConfig, provenance: dict[str, Any]) -> None:
        _write_json(self.config, {"config": cfg.to_dict(), "provenance": provenance})

    def read_config(self) -> TrainConfig:
        return TrainConfig.from_json(self.config)

    def read_provenance(self) -> dict[str, Any]:
        return json.loads(self.config.read_text())["provenance"]

    def read_history(self) -> list[dict[str, float]]:
        with self.history.open() as f:
            return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]

    def write_results(self, result: TrainResult) -> None:
        _write_json(self.results, asdict(result))

    def read_results(self) -> TrainResult:
        return TrainResult(**json.loads(self.results.read_text()))

    def write_test_metrics(self, metrics: TestMetrics) -> None:
        _write_json(self.test_metrics, metrics.to_dict())

    def read_test_metrics(self) -> TestMetrics:
        seal.check_open(f"the test metrics of {self.path}")
        return TestMetrics(**json.loads(self.test_metrics.read_text()))

    def write_predictions(self, p: Predictions) -> None:
        torch.save(asdict(p), self.predictions)

    def read_predictions(self) -> Predictions:
        seal.check_open(f"the test predictions of {self.path}")
        return Predictions(**torch.load(self.predictions, weights_only=True))


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


# ---------------------------------------------------------------- checkpoints


class DiskFull(OSError):
    """A checkpoint could not be written for want of space; the previous one is kept."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write to a temporary file and rename: a crash never leaves a torn checkpoint. A full disk
    (ENOSPC, or a quota) removes the partial file and raises DiskFull, the previous checkpoint intact."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    # Serialised in memory first, written by Python: a full disk is then an OSError with its errno
    # (torch.save writing to the file itself reports it as an opaque RuntimeError).
    buffer = io.BytesIO()
    torch.save({"format_version": CHECKPOINT_VERSION, **state}, buffer)
    try:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        kept = f"the previous {path.name} is kept" if path.is_file() else f"no {path.name} was written before"
        raise DiskFull(errno.ENOSPC, f"no space left to write {path.name} in {path.parent}: {kept}; free space "
                                     f"and resume with: python -m cifar.train --resume {path.parent}") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first_line = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}: {first_line}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format_version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path} is not a version-{CHECKPOINT_VERSION} checkpoint of this project")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> tuple[SmallCNN, TrainConfig]:
    """Rebuild the model (eval mode, CPU) from a checkpoint alone."""
    cfg = TrainConfig.from_dict(ckpt["config"])
    model = SmallCNN(cfg.model)
    model.load_state_dict(ckpt["model"])
    return model.eval(), cfg
