"""The data a run trains on: a seeded, stratified train/validation split and its statistics.

``prepare_data`` loads the source (``cifar.sources``), holds out a stratified
validation split, optionally keeps only a share of the rest (the study's cheap
trials), and measures the per-channel statistics of the train split. Tuning and
early stopping see validation only; the test set is read by evaluation and the
report, never by model selection: the report locks it (``lock_test``) until its
selection is done, and any read of a locked test set raises ``TestSetLocked``; data prepared
while the process's test set is sealed (``cifar.seal``) is locked from the start.

Usage:
    data = prepare_data(DataConfig(data_dir="../shared/data/cifar10-jpeg"))
    batches = Pipeline(data.train, cfg, data.mean, data.std, device, train=True, seed=0)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cifar import seal
from cifar.config import DataConfig
from cifar.seal import TestSetLocked
from cifar.sources import DataError, RawCifar, Split, load_cifar10, source_name

__all__ = ["CifarData", "DataError", "Split", "TestSetLocked", "channel_stats", "check_data", "prepare_data",
           "stratified_split"]


class _LockedSplit:
    """Stands in for a locked test split: its size may be read, its images and labels may not."""

    def __init__(self, n: int, why: str):
        self.n, self.why = n, why

    def __len__(self) -> int:
        return self.n

    def __getattr__(self, name: str):
        raise TestSetLocked(f"the test set is locked: {self.why}")


@dataclass
class CifarData:
    train: Split
    val: Split
    test: Split
    classes: list[str]
    mean: tuple[float, float, float]  # per-channel mean of the train split, in [0, 1]
    std: tuple[float, float, float]
    source: str                        # "torchvision" or "imagefolder:<dir>"

    def lock_test(self, why: str) -> None:
        """Until ``unlock_test``, reading the test images or labels raises TestSetLocked."""
        if not isinstance(self.test, _LockedSplit):
            self._test, self.test = self.test, _LockedSplit(len(self.test), why)

    def unlock_test(self) -> None:
        if isinstance(self.test, _LockedSplit):
            self.test = self._test


def stratified_split(labels: torch.Tensor, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of indices into (train, val) keeping class proportions in val."""
    n = len(labels)
    if not 0 <= val_size < n:
        raise ValueError(f"val_size must be in [0, {n}), got {val_size}")
    g = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(labels, return_counts=True)
    # Largest-remainder rounding makes the per-class shares sum to val_size exactly.
    exact = counts.double() * val_size / n
    take = exact.floor().long()
    remainder = val_size - int(take.sum())
    take[torch.argsort(exact - take, descending=True, stable=True)[:remainder]] += 1
    val_parts = []
    for c, k in zip(classes.tolist(), take.tolist()):
        idx = torch.nonzero(labels == c).flatten()
        val_parts.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    val = torch.cat(val_parts).sort().values
    mask = torch.ones(n, dtype=torch.bool)
    mask[val] = False
    return torch.nonzero(mask).flatten(), val


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (unbiased) in [0, 1] units of a uint8 (N, 3, H, W) tensor."""
    # In chunks: a float64 copy of the whole train split would take over 1 GB.
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for chunk in x.split(2048):
        c = chunk.double()
        total += c.sum((0, 2, 3))
        squares += c.square().sum((0, 2, 3))
    n = x.numel() // x.shape[1]
    mean = total / n
    var = (squares - n * mean.square()) / (n - 1)
    return tuple((mean / 255).tolist()), tuple((var.sqrt() / 255).tolist())


def prepare_data(cfg: DataConfig, seed: int = 0, download: bool = True, raw: RawCifar | None = None) -> CifarData:
    """Load, split (seeded, stratified), subsample the train split, and measure its statistics.

    ``raw``: the source as ``check_data`` already loaded it (not read again).
    """
    raw = raw or load_cifar10(cfg.data_dir, cfg.cache_dir, download)
    train_idx, val_idx = stratified_split(raw.train.y, cfg.val_size, cfg.split_seed)
    if cfg.train_fraction < 1.0:
        keep = max(1, round(len(train_idx) * cfg.train_fraction))
        sub, _ = stratified_split(raw.train.y[train_idx], len(train_idx) - keep, cfg.split_seed + 1)
        train_idx = train_idx[sub]
    train = Split(raw.train.x[train_idx], raw.train.y[train_idx])
    mean, std = channel_stats(train.x)
    data = CifarData(
        train=train,
        val=Split(raw.train.x[val_idx], raw.train.y[val_idx]),
        test=raw.test,
        classes=raw.classes,
        mean=mean, std=std, source=source_name(cfg.data_dir),
    )
    if seal.reason():  # prepared while model selection runs: born locked
        data.lock_test(seal.reason())
    return data


def check_data(cfg: DataConfig, download: bool = True) -> RawCifar:
    """The source, loaded and checked against the config's split as prepare_data will use it
    (DataError or ValueError with one line), without the copies and statistics of a run's data."""
    raw = load_cifar10(cfg.data_dir, cfg.cache_dir, download)
    stratified_split(raw.train.y, cfg.val_size, cfg.split_seed)
    return raw
