"""SmallCNN: a compact CIFAR-10 network with plain or residual blocks.

Layout: an optional full-resolution stem conv, then one stage per entry of
``ModelConfig.widths``. The first block of a stage changes the width and halves
the resolution (max-pool right after its first convolution, so BatchNorm and
ReLU run on a quarter of the pixels); the other ``depth - 1`` blocks keep both.
Each stage ends with Dropout; global max pooling and a linear layer make the head,
whose output is scaled by 1/8 (as ResNet-9 of DAWNBench and airbench do) so the
first steps at a high learning rate don't saturate the softmax.

- plain block: conv3x3-BN-ReLU (one convolution)
- residual block: conv3x3-BN-ReLU-conv3x3-BN plus a shortcut, then ReLU; the
  shortcut is the identity, or avg-pool + 1x1 conv + BN where the block pools
  or changes width (a simplified ResNet basic block).

Usage:
    model = SmallCNN(ModelConfig(widths=(64, 128, 256), block="residual"))
    print(count_parameters(model), forward_flops(model))
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cifar.registry import Registry

if TYPE_CHECKING:
    from cifar.config import ModelConfig


def _conv(c_in: int, c_out: int, k: int = 3) -> nn.Conv2d:
    # No bias: every convolution is followed by BatchNorm, which has its own shift.
    return nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False)


class PlainBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, pool: bool):
        super().__init__()
        self.conv = _conv(c_in, c_out)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.pool(self.conv(x))))


class ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, pool: bool):
        super().__init__()
        self.conv1 = _conv(c_in, c_out)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.act = nn.ReLU(inplace=True)
        if pool or c_in != c_out:
            # Average pooling commutes with the 1x1 conv, so pool first: 4x fewer FLOPs.
            self.shortcut = nn.Sequential(nn.AvgPool2d(2) if pool else nn.Identity(),
                                          _conv(c_in, c_out, k=1), nn.BatchNorm2d(c_out))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.pool(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


BLOCKS: Registry[type[nn.Module]] = Registry("block", {"plain": PlainBlock, "residual": ResidualBlock})
HEAD_SCALE = 0.125


class SmallCNN(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        c = 3
        if cfg.stem_width:
            layers += [_conv(3, cfg.stem_width), nn.BatchNorm2d(cfg.stem_width), nn.ReLU(inplace=True)]
            c = cfg.stem_width
        block = BLOCKS.get(cfg.block)
        for width in cfg.widths:
            for i in range(cfg.depth):
                layers.append(block(c if i == 0 else width, width, pool=i == 0))
            layers.append(nn.Dropout(cfg.dropout))
            c = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(c, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1)) * HEAD_SCALE


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: nn.Module) -> int:
    """Forward FLOPs of one 32x32 image (a multiply-add counts as 2), by PyTorch's counter."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, 32, 32, device=device))
    model.train(was_training)
    return counter.get_total_flops()


@functools.lru_cache(maxsize=128)
def shape_cost(cfg: ModelConfig) -> tuple[int, int]:
    """(parameters, forward FLOPs) of one model shape, cached: call model_cost, which ignores dropout."""
    model = SmallCNN(cfg)
    return count_parameters(model), forward_flops(model)


def model_cost(cfg: ModelConfig) -> tuple[int, int]:
    """(parameters, forward FLOPs per image) of the model a config builds, counted once per shape.

    Counting FLOPs runs the model under PyTorch's counter (seconds on a slow CPU); a study
    asks for every trial, and dropout, the one model field a default study varies, changes
    neither number.
    """
    return shape_cost(dataclasses.replace(cfg, dropout=0.0))
