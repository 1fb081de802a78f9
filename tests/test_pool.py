"""The low-memory 2x2 max pooling: max_pool2d's results bit for bit, less kept, and its fallbacks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cifar import pool
from cifar.config import TrainConfig
from cifar.model import SmallCNN

needs_kernel = pytest.mark.skipif(pool.kernel() is None, reason="the kernel could not be built here (no compiler)")


def awkward(n: int, c: int, h: int, w: int) -> torch.Tensor:
    """Channels-last input with what a max pooling can get wrong: ties (flat regions, as a
    conv gives on flat image areas), NaN, -inf windows, negative zero."""
    torch.manual_seed(0)
    x = torch.randn(n, c, h, w)
    x[:, :, : h // 2, : w // 2] = 0.25          # ties in every window of a quarter of the image
    x[0, 0, 1, 0] = float("nan")                # a NaN beside numbers
    x[0, 1, :2, :2] = float("nan")              # a window of NaNs
    x[min(1, n - 1), 0, :2, :2] = float("-inf")  # a window of -inf
    x[0, c - 1, 0, 0], x[0, c - 1, 0, 1] = 0.0, -0.0
    return x.contiguous(memory_format=torch.channels_last)


def pooled_and_grad(x: torch.Tensor, fn) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_()
    out = fn(x)
    torch.manual_seed(1)
    out.backward(torch.randn(out.shape).contiguous(memory_format=torch.channels_last))
    return out.detach(), x.grad


@needs_kernel
@pytest.mark.parametrize("shape", [(3, 5, 31, 31), (2, 8, 15, 15), (2, 16, 7, 6), (2, 3, 2, 2), (1, 4, 6, 9)])
def test_kernel_equals_max_pool2d_bit_for_bit(shape, monkeypatch):
    monkeypatch.setenv(pool.ENV, "1")
    x = awkward(*shape)
    out, grad = pooled_and_grad(x, pool.max_pool2x2)
    ref_out, ref_grad = pooled_and_grad(x, lambda t: F.max_pool2d(t, 2))
    assert torch.equal(out.isnan(), ref_out.isnan()) and torch.equal(out.nan_to_num(), ref_out.nan_to_num())
    assert torch.equal(grad, ref_grad)  # the winners' gradients land where max_pool2d's indices put them
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert grad.is_contiguous(memory_format=torch.channels_last)


def saved_tensors(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(t) or t, lambda t: t):
        model(x)
    return kept


@needs_kernel
def test_training_keeps_one_byte_per_pooled_output_and_the_same_gradients(monkeypatch):
    cfg = TrainConfig.from_json("configs/fast.json")
    x = awkward(8, 3, 32, 32)
    x = torch.where(x.isfinite(), x, 0.0)  # ties, no NaN: a NaN would make every gradient NaN
    grads, kept = {}, {}
    for flag in ("1", "0"):
        monkeypatch.setenv(pool.ENV, flag)
        torch.manual_seed(0)
        model = SmallCNN(cfg.model).to(memory_format=torch.channels_last).train()
        kept[flag] = saved_tensors(model, x)
        torch.manual_seed(0)
        model = SmallCNN(cfg.model).to(memory_format=torch.channels_last).train()
        model(x).square().sum().backward()
        grads[flag] = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.equal(a, b) for a, b in zip(grads["1"], grads["0"], strict=True))
    # the three pooling layers: uint8 winners (8, 15, 15, 64), (8, 7, 7, 128), (8, 3, 3, 128)
    winners = [t for t in kept["1"] if t.dtype == torch.uint8]
    assert [tuple(t.shape) for t in winners] == [(8, 15, 15, 64), (8, 7, 7, 128), (8, 3, 3, 128)]
    def indices(flag):  # int64 indices: max_pool2d's, and the head's global max pooling's (8, 128, 1, 1)
        return sorted(tuple(t.shape) for t in kept[flag] if t.dtype == torch.int64)
    assert indices("1") == [(8, 128, 1, 1)]
    assert indices("0") == [(8, 64, 15, 15), (8, 128, 1, 1), (8, 128, 3, 3), (8, 128, 7, 7)]


def test_evaluation_and_other_layouts_use_max_pool2d(monkeypatch):
    def refuse(x):
        raise AssertionError("the kernel ran where max_pool2d should")
    monkeypatch.setattr(pool._Pool, "apply", refuse)
    monkeypatch.setenv(pool.ENV, "1")
    layer = pool.MaxPool2x2()
    x = awkward(2, 4, 8, 8).nan_to_num().requires_grad_()
    layer.eval()(x)                                   # evaluation
    with torch.no_grad():
        layer.train()(x)                              # no backward pass to keep anything for
    layer.train()(x.detach().contiguous())            # not channels-last (with 4 channels)
    layer.train()(x.detach().double().requires_grad_().contiguous(memory_format=torch.channels_last))  # float64
    monkeypatch.delenv(pool.ENV, raising=False)
    layer.train()(x)                                  # not turned on (the default)


def test_a_kernel_that_cannot_be_built_warns_once_and_max_pool2d_does_the_work(monkeypatch):
    import torch.utils.cpp_extension as ext

    def no_compiler(**kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions\nmore detail")
    monkeypatch.setattr(ext, "load", no_compiler)
    monkeypatch.setattr(pool, "_kernel", [])
    monkeypatch.setenv(pool.ENV, "1")
    x = awkward(2, 4, 8, 8).nan_to_num()
    with pytest.warns(RuntimeWarning, match="could not be built.*Ninja is required") as caught:
        out, grad = pooled_and_grad(x, pool.MaxPool2x2().train())
        pooled_and_grad(x, pool.MaxPool2x2().train())
    assert len(caught) == 1
    ref_out, ref_grad = pooled_and_grad(x, lambda t: F.max_pool2d(t, 2))
    assert torch.equal(out, ref_out) and torch.equal(grad, ref_grad)
