"""Test-time augmentation: logits averaged over mirrored and shifted copies of each image.

Levels: 0 none; 1 mirror (the image and its mirror image, averaged); 2 mirror and
translate (half the mirror average of the image, a quarter each of the mirror
averages of the image shifted one pixel up-left and down-right, reflect padded).
Level 2 costs 6 forward passes per image. ``TTA`` wraps a model so the same
arithmetic runs in PyTorch and inside an ONNX graph.

Usage:
    logits = TTA(model, level=2)(normalised_images)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TTA_LEVELS = {0: "none", 1: "mirror", 2: "mirror + 1-pixel translate"}
PASSES = {0: 1, 1: 2, 2: 6}  # forward passes per image at each level
REPORTED = 2  # the level a test read measures beside plain where none is asked


def tta_passes(level: int) -> int:
    return PASSES[level]


def mirror_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return 0.5 * model(x) + 0.5 * model(x.flip(-1))


def tta_logits(model: nn.Module, x: torch.Tensor, level: int) -> torch.Tensor:
    if level not in TTA_LEVELS:
        raise ValueError(f"unknown TTA level {level}; choose one of {', '.join(map(str, TTA_LEVELS))}")
    if level == 0:
        return model(x)
    logits = mirror_logits(model, x)
    if level == 1:
        return logits
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[..., :h, :w], padded[..., 2:, 2:]]
    return 0.5 * logits + 0.25 * sum(mirror_logits(model, s) for s in shifted)


class TTA(nn.Module):
    """``model`` evaluated with test-time augmentation of ``level``."""

    def __init__(self, model: nn.Module, level: int):
        super().__init__()
        if level not in TTA_LEVELS:
            raise ValueError(f"unknown TTA level {level}; choose one of {', '.join(map(str, TTA_LEVELS))}")
        self.model, self.level = model, level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tta_logits(self.model, x, self.level)
