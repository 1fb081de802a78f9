"""Model: shapes, finiteness, shortcuts, parameter and FLOP counts."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cifar.config import ModelConfig
from cifar.model import ResidualBlock, SmallCNN, count_parameters, forward_flops


@pytest.mark.parametrize("cfg", [
    ModelConfig(widths=(8, 16), depth=1, stem_width=0),                      # smallest plain
    ModelConfig(widths=(8, 16, 32), depth=2, stem_width=4),                  # plain with stem
    ModelConfig(widths=(8, 16), depth=2, block="residual", stem_width=0),    # residual, two per stage
    ModelConfig(widths=(8, 8, 8, 8, 8), depth=1, block="residual"),          # five stages: 1x1 at the end
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_forward_shape_and_finite(cfg, channels_last):
    torch.manual_seed(0)
    model = SmallCNN(cfg)
    x = torch.randn(4, 3, 32, 32)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    out = model(x)
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("c_in, c_out, pool, projected", [
    (8, 8, False, False),   # same shape: identity shortcut
    (8, 16, False, True),   # wider: 1x1 projection
    (8, 8, True, True),     # smaller: pooled projection
])
def test_residual_shortcut_kind(c_in, c_out, pool, projected):
    block = ResidualBlock(c_in, c_out, pool)
    assert isinstance(block.shortcut, torch.nn.Identity) != projected
    out = block(torch.randn(2, c_in, 8, 8))
    assert out.shape == (2, c_out, 4 if pool else 8, 4 if pool else 8)
    assert (out >= 0).all()  # ends with ReLU


def test_parameter_count_matches_hand_count():
    # stem 0; stage conv 3->8 (216) + BN (16); stage conv 8->16 (1152) + BN (32); head 16*10+10
    model = SmallCNN(ModelConfig(widths=(8, 16), depth=1, stem_width=0))
    assert count_parameters(model) == 216 + 16 + 1152 + 32 + 170


def test_flops_match_hand_count():
    model = SmallCNN(ModelConfig(widths=(8, 16), depth=1, stem_width=0))
    # conv 3->8 at 32x32 and conv 8->16 at 16x16, 2 FLOPs per multiply-add, plus the head.
    expected = 2 * (32 * 32 * 3 * 8 * 9 + 16 * 16 * 8 * 16 * 9 + 16 * 10)
    assert forward_flops(model) == expected
    assert model.training  # counting leaves the mode alone


def test_model_cost_is_counted_once_per_shape():
    from cifar.model import model_cost, shape_cost

    cfg = ModelConfig(widths=(8, 16), depth=1, stem_width=0, dropout=0.3, num_classes=3)
    model = SmallCNN(cfg)
    shape_cost.cache_clear()
    assert model_cost(cfg) == (count_parameters(model), forward_flops(model))
    assert model_cost(dataclasses.replace(cfg, dropout=0.1)) == model_cost(cfg)  # dropout changes neither
    assert shape_cost.cache_info().misses == 1
    assert model_cost(dataclasses.replace(cfg, widths=(8, 32)))[0] > model_cost(cfg)[0]
