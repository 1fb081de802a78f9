"""Muon for the conv filters (optimizer "muon"): the orthogonalization, the step, the split, resuming."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim._muon import _zeropower_via_newtonschulz

from cifar.config import TrainConfig
from cifar.model import SmallCNN
from cifar.optim import Muon, build_optimizer, orthogonalize
from cifar.rundir import identity
from tests.test_recipe import FAST_MODEL, assert_trains_and_resumes_exactly, fast_config

COEFFICIENTS = (3.4445, -4.7750, 2.0315)


@pytest.mark.parametrize("shape", [(16, 72), (72, 16), (32, 32)])
def test_orthogonalize_agrees_with_pytorchs_newton_schulz_and_keeps_the_singular_vectors(shape):
    torch.manual_seed(0)
    g = torch.randn(shape)
    ours = orthogonalize(g, steps=3)
    # PyTorch's own iteration (its Muon's), computed in bfloat16: equal within bfloat16's precision.
    theirs = _zeropower_via_newtonschulz(g, COEFFICIENTS, 3, 1e-7).float()
    assert (ours - theirs).abs().max() < 0.02 * ours.abs().max()
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    mapped = u.T @ ours @ vh.T  # diagonal: the same singular vectors, new singular values
    off = mapped - torch.diag(torch.diagonal(mapped))
    assert off.abs().max() < 1e-4
    # Within [0.5, 1.5] wherever 3 steps (slope 3.4445 each at zero) lift them there; never above.
    lifted = torch.diagonal(mapped)[s >= 0.02 * g.norm()]
    assert lifted.min() > 0.5 and torch.diagonal(mapped).max() < 1.5
    assert torch.allclose(orthogonalize(1000 * g), ours, atol=1e-5)  # the gradient's scale does not matter


def test_plain_groups_step_exactly_as_torch_sgd():
    torch.manual_seed(0)
    w = torch.randn(5, 3, requires_grad=True)
    w2 = w.detach().clone().requires_grad_(True)
    ours = Muon([{"params": [w], "lr": 0.1, "momentum": 0.85, "weight_decay": 0.01}])
    theirs = torch.optim.SGD([w2], lr=0.1, momentum=0.85, weight_decay=0.01, nesterov=True)
    for _ in range(4):
        grad = torch.randn(5, 3)
        for p, opt in ((w, ours), (w2, theirs)):
            p.grad = grad.clone()
            opt.step()
    assert torch.allclose(w, w2, atol=1e-6)


def test_a_muon_step_rescales_the_filter_then_moves_it_by_the_orthogonalized_momentum():
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3)
    p = w.clone().requires_grad_(True)
    opt = Muon([{"params": [p], "lr": 0.24, "momentum": 0.6, "muon": True}])
    g1, g2 = torch.randn_like(w), torch.randn_like(w)
    p.grad = g1
    opt.step()
    start = w * math.sqrt(8) / w.norm()
    first = start - 0.24 * orthogonalize((1.6 * g1).reshape(8, -1)).view_as(w)  # Nesterov: g + m x (g)
    assert torch.allclose(p.detach(), first, atol=1e-5)
    p.grad = g2
    opt.step()
    buf = 0.6 * g1 + g2
    second = first * math.sqrt(8) / first.norm() - 0.24 * orthogonalize((g2 + 0.6 * buf).reshape(8, -1)).view_as(w)
    assert torch.allclose(p.detach(), second, atol=1e-5)


def test_muon_takes_the_trainable_filters_and_per_1024_sgd_the_rest():
    cfg = TrainConfig(model=FAST_MODEL, optimizer="muon", lr=6.5, momentum=0.85, weight_decay=0.0157,
                      batch_size=2000, bias_lr_scale=64.0, weight_decay_all=True, muon_lr=0.24, muon_momentum=0.6)
    net = SmallCNN(cfg.model)
    groups = build_optimizer(cfg, net).param_groups
    filters = [p for p in net.parameters() if p.ndim == 4 and p.requires_grad]
    assert [g["muon"] for g in groups] == [False, False, False, True]
    assert {id(p) for p in groups[-1]["params"]} == {id(p) for p in filters}
    assert groups[-1]["lr"] == 0.24 and groups[-1]["momentum"] == 0.6 and groups[-1]["weight_decay"] == 0.0
    plain = 6.5 * 2000 / (1024 * (1 + 1 / 0.15))  # sgd1024's lr for the batch mean loss
    assert [g["lr"] for g in groups[:3]] == [pytest.approx(plain), pytest.approx(64 * plain), pytest.approx(plain)]
    assert all(p.ndim < 4 for g in groups[:3] for p in g["params"])
    assert {g["momentum"] for g in groups[:3]} == {0.85}


def test_muons_keys_enter_the_run_identity_only_with_muon():
    assert "muon_lr" not in identity(TrainConfig(optimizer="sgd1024"))
    assert identity(TrainConfig(optimizer="muon"))["muon_lr"] == 0.24
    with pytest.raises(ValueError, match="muon_lr"):
        TrainConfig(muon_lr=0.0)


def test_a_muon_run_trains_and_resumes_exactly(tiny_data, tmp_path):
    cfg = fast_config(optimizer="muon", muon_lr=0.2, muon_momentum=0.6, schedule="onecycle", warmup_epochs=0.0,
                      lookahead=False)
    assert_trains_and_resumes_exactly(cfg, tiny_data, tmp_path)
