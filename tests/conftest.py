"""Shared fixtures: tiny synthetic CIFAR-like data and tiny configs (fast, offline, CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cifar.config import DataConfig, ModelConfig, TrainConfig, apply_overrides
from cifar.data import CifarData, Split, channel_stats
from cifar.synthetic import CLASSES, make_image_folder, synthetic_images


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "imgs")


@pytest.fixture
def tiny_data() -> CifarData:
    train_x, train_y = synthetic_images(96, 0)
    val_x, val_y = synthetic_images(24, 1)
    test_x, test_y = synthetic_images(24, 2)
    mean, std = channel_stats(train_x)
    return CifarData(Split(train_x, train_y), Split(val_x, val_y), Split(test_x, test_y),
                     CLASSES, mean, std, source="synthetic")


def tiny_config(**overrides) -> TrainConfig:
    """A tiny config; ``data=``/``model=`` replace a sub-config, other keys are any leaf field."""
    data = overrides.pop("data", DataConfig(val_size=6))
    model = overrides.pop("model", ModelConfig(widths=(8, 16), depth=1, stem_width=0, dropout=0.0,
                                               num_classes=len(CLASSES)))
    cfg = TrainConfig(data=data, model=model, epochs=2, batch_size=16, lr=0.05, warmup_epochs=0.5,
                      eval_batch_size=32, device="cpu")
    return apply_overrides(cfg, overrides)


@pytest.fixture(autouse=True)
def _quiet_threads():
    # Tests run tiny models: one thread is faster and makes timing noise irrelevant.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    np.random.seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run directory (best.pt, config.json, ...) of a tiny model trained for 2 epochs."""
    from cifar.train import train

    train_x, train_y = synthetic_images(96, 0)
    val_x, val_y = synthetic_images(24, 1)
    test_x, test_y = synthetic_images(24, 2)
    mean, std = channel_stats(train_x)
    data = CifarData(Split(train_x, train_y), Split(val_x, val_y), Split(test_x, test_y),
                     CLASSES, mean, std, source="synthetic")
    run_dir = tmp_path_factory.mktemp("tiny-run")
    torch.set_num_threads(1)
    train(tiny_config(), data, run_dir)
    return run_dir
