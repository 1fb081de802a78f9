"""Synthetic CIFAR-shaped images, learnable but not trivial: offline data for the tests and for
benchmarks of the machinery around training (bench/load.py).

Usage:
    x, y = synthetic_images(96, seed=0)                       # uint8 (96, 3, 32, 32), labels
    folder = make_image_folder(Path("imgs"), n_train=60)      # an ImageFolder: train/<class>/*.png, test/...
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

CLASSES = ["ant", "bee", "cow"]


def synthetic_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images whose class sets the dominant colour channel, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % len(CLASSES)
    x = torch.randint(0, 120, (n, 3, 32, 32), generator=g)
    x[torch.arange(n), y] += 120
    return x.to(torch.uint8), y


def make_image_folder(root: Path, n_train: int = 30, n_test: int = 9, suffix: str = ".png") -> Path:
    """``root`` as an image folder of ``n_train`` and ``n_test`` synthetic images."""
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        x, y = synthetic_images(n, seed)
        for i in range(n):
            folder = root / split / CLASSES[int(y[i])]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i].permute(1, 2, 0).numpy()).save(folder / f"{i:04d}{suffix}")
    return root
