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

It also holds what makes two runs the same run: ``same_run`` (every field but
where the data lies) and ``run_key`` (the config as the run caches hash it),
which training, the study, the report and the benchmarks all use.

Usage:
    run = RunDir("runs/smallcnn")
    path = run_dir_for(cfg, Path("runs/reports"))   # <key>-seed<seed>; finished(path, cfg) if trained
    cfg, history = run.read_config(), run.read_history()
    model, cfg = model_from_checkpoint(load_checkpoint(run.best))
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from cifar import seal
from cifar.config import DATA_LOCATION, TrainConfig, flatten
from cifar.model import SmallCNN

CHECKPOINT_VERSION = 1


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
    test_acc_by_tta: dict[str, float] = field(default_factory=dict)  # every level read of this checkpoint
    read_of: str = ""                 # what was read: digests of the checkpoint file and the test labels

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def acc_at(self, tta: int) -> float:
        """Test accuracy predicting at TTA level ``tta`` (NaN where that level was not measured)."""
        if tta == 0:
            return self.test_acc
        if str(tta) in self.test_acc_by_tta:
            return self.test_acc_by_tta[str(tta)]
        return self.test_acc_tta if self.tta_level == tta else math.nan  # written before the record by level


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
    return read_checkpoint(path)[0]


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], bytes]:
    """The checkpoint at ``path`` and the bytes it was loaded from (read once: a digest of them is of what loaded)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        raw = path.read_bytes()
        ckpt = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:
        first_line = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}: {first_line}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format_version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path} is not a version-{CHECKPOINT_VERSION} checkpoint of this project")
    return ckpt, raw


def model_from_checkpoint(ckpt: dict[str, Any]) -> tuple[SmallCNN, TrainConfig]:
    """Rebuild the model (eval mode, CPU) from a checkpoint alone."""
    cfg = TrainConfig.from_dict(ckpt["config"])
    model = SmallCNN(cfg.model)
    model.load_state_dict(ckpt["model"])
    return model.eval(), cfg


def identity(cfg: TrainConfig) -> dict[str, Any]:
    """The config as run caches hash it: muon's keys only where the optimizer is muon, low_memory only where
    on (elsewhere they change nothing, and runs cached before they existed keep their keys)."""
    d = cfg.to_dict()
    if cfg.optimizer != "muon":
        del d["muon_lr"], d["muon_momentum"]
    if not cfg.low_memory:
        del d["low_memory"]
    return d


def run_key(cfg: TrainConfig) -> str:
    """The cache key of the run ``cfg`` trains (seed included): a hash of its ``identity``."""
    return hashlib.sha1(json.dumps(identity(cfg), sort_keys=True).encode()).hexdigest()


def run_dir_for(cfg: TrainConfig, runs_root: Path) -> Path:
    return runs_root / f"{run_key(cfg)[:12]}-seed{cfg.seed}"


def same_run(a: TrainConfig, b: TrainConfig) -> bool:
    """Whether two configs train the same run, wherever their data lies."""
    fa, fb = flatten(a), flatten(b)
    return all(fa[k] == fb[k] for k in fa if k not in DATA_LOCATION)


def finished(run_dir: Path, cfg: TrainConfig) -> bool:
    """A run directory that trained ``cfg`` to its last epoch."""
    run = RunDir(run_dir)
    if not (run.results.is_file() and run.config.is_file()) or not same_run(run.read_config(), cfg):
        return False
    return run.read_results().epochs_run == cfg.epochs
