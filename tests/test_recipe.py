"""The fast recipe's techniques: whitening, per-1024 SGD, lookahead, alternating flip, TTA, triangle schedule."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cifar.config import DataConfig, ModelConfig, TrainConfig, apply_overrides
from cifar.data import Split
from cifar.model import PatchWhitening, SmallCNN
from cifar.optim import Lookahead, LrSchedule, build_optimizer
from cifar.pipeline import Pipeline
from cifar.train import train
from cifar.tta import TTA, tta_logits
from tests.conftest import CLASSES, synthetic_images, tiny_config
from tests.test_train import read_rows

FAST_MODEL = ModelConfig(widths=(8, 16), depth=2, stem="whiten", activation="gelu", bn_scale=False,
                         bn_eps=1e-12, bn_momentum=0.4, dirac_init=True, dropout=0.0, head_scale=1 / 9,
                         head_bias=False, num_classes=len(CLASSES))


def fast_config(**overrides) -> TrainConfig:
    """A tiny config with every technique of configs/fast.json switched on."""
    cfg = tiny_config(model=FAST_MODEL, data=DataConfig(val_size=6, crop_padding=2, alternating_flip=True),
                      epochs=4, batch_size=16, optimizer="sgd1024", lr=2.0, momentum=0.85, weight_decay=0.0153,
                      weight_decay_all=True, bias_lr_scale=64.0, schedule="triangle", label_smoothing=0.2,
                      whiten_bias_epochs=2, lookahead=True, lookahead_every=2, lookahead_start=0.25)
    return apply_overrides(cfg, overrides)


def test_whitening_layer_whitens_train_patches():
    g = torch.Generator().manual_seed(0)
    # Correlated channels and neighbouring pixels, as in natural images.
    base = torch.randn(200, 1, 17, 17, generator=g)
    images = torch.cat([base, 0.8 * base + 0.2 * torch.randn(200, 1, 17, 17, generator=g),
                        torch.randn(200, 1, 17, 17, generator=g)], 1)
    images = F.avg_pool2d(images, 2, stride=1)  # smooth: 2x2 patches now correlate strongly
    layer = PatchWhitening(eps=1e-8)
    layer.fit(images)
    with torch.no_grad():
        out = layer(images)[:, :12] - layer.bias[:12].view(1, -1, 1, 1)
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    covariance = torch.cov(flat.T)
    assert torch.allclose(covariance, torch.eye(12), atol=1e-3)
    assert torch.equal(layer.weight[12:], -layer.weight[:12])  # stacked with its negatives
    assert not layer.weight.requires_grad and layer.bias.requires_grad


def test_lookahead_update_arithmetic():
    net = torch.nn.Linear(1, 1, bias=False)
    cfg = TrainConfig(lookahead=True, lookahead_every=2, lookahead_decay=0.5, lookahead_start=0.25)
    la = Lookahead(cfg, net, total_steps=8)  # starts at step 2, updates at 2, 4, 6, 8
    weights = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]  # what the optimizer leaves after each step
    seen, average = [], None
    for step, w in enumerate(weights, start=1):
        net.weight.data.fill_(w)
        la.step(step)
        seen.append(net.weight.item())
        # Hand arithmetic: the first update copies, later ones lerp with decay 0.5 * (step/8)^3.
        if step >= 2 and step % 2 == 0:
            if average is None:
                average = w
            else:
                decay = 0.5 * (step / 8) ** 3
                average = decay * average + (1 - decay) * w
            assert seen[-1] == pytest.approx(average)
        else:
            assert seen[-1] == w  # no update: the weights are the optimizer's
    assert la.state_dict() == {"started": True}


def test_per_1024_sgd_equals_the_plain_sgd_it_stands_for():
    torch.manual_seed(0)
    cfg = TrainConfig(optimizer="sgd1024", lr=11.5, momentum=0.85, weight_decay=0.0153, batch_size=32,
                      weight_decay_all=True, model=ModelConfig(widths=(4,), depth=1, stem_width=0, dropout=0.0,
                                                                 num_classes=3))
    a = SmallCNN(cfg.model)
    b = SmallCNN(cfg.model)
    b.load_state_dict(a.state_dict())
    ours = build_optimizer(cfg, a)
    # airbench's form: summed loss, lr / (1024 (1 + 1/(1-m))), weight decay x batch / that scale, as torch's
    # coupled decay divided by the lr.
    scale = 1024 * (1 + 1 / (1 - 0.85))
    lr, wd = 11.5 / scale, 0.0153 * 32 / scale
    theirs = torch.optim.SGD(b.parameters(), lr=lr, weight_decay=wd / lr, momentum=0.85, nesterov=True)
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 3, (32,))
    for _ in range(3):
        ours.zero_grad()
        F.cross_entropy(a(x), y).backward()
        ours.step()
        theirs.zero_grad()
        F.cross_entropy(b(x), y, reduction="sum").backward()
        theirs.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_bias_lr_scale_speeds_up_batchnorm_only():
    cfg = TrainConfig(bias_lr_scale=64.0, lr=0.1, weight_decay=1e-3, weight_decay_all=True,
                      model=ModelConfig(widths=(4,), depth=1, stem_width=0, num_classes=3))
    groups = build_optimizer(cfg, SmallCNN(cfg.model)).param_groups
    assert [g["lr"] for g in groups] == [pytest.approx(0.1), pytest.approx(6.4), pytest.approx(0.1)]
    # The decay step (lr x decay) is the same in every group.
    assert {round(g["lr"] * g["weight_decay"], 12) for g in groups} == {1e-4}


def test_alternating_flip_flips_each_image_every_other_epoch():
    n = 40
    x, _ = synthetic_images(n, 0)
    split = Split(x, torch.arange(n))  # the label is the image's index
    cfg = tiny_config(data=DataConfig(crop_padding=0, alternating_flip=True), batch_size=8)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    batches = Pipeline(split, cfg, mean, std, torch.device("cpu"), train=True, seed=3)
    plain = batches.normalize(x.float().to(torch.uint8))
    flipped_by_epoch = []
    for _ in range(4):
        flipped = {}
        for images, ids in batches:
            for img, i in zip(images, ids.tolist()):
                if torch.equal(img, plain[i].flip(-1)) and not torch.equal(img, plain[i]):
                    flipped[i] = True
                else:
                    assert torch.equal(img, plain[i])
                    flipped[i] = False
        flipped_by_epoch.append(flipped)
    first = flipped_by_epoch[0]
    assert 0.2 < sum(first.values()) / len(first) < 0.8  # a seeded half starts flipped
    for epoch, flipped in enumerate(flipped_by_epoch):
        assert all(flipped[i] == (first[i] ^ (epoch % 2 == 1)) for i in flipped)


def test_tta_shapes_and_a_mirror_symmetric_input():
    torch.manual_seed(0)
    model = SmallCNN(ModelConfig(widths=(8,), depth=1, stem_width=0, num_classes=3)).eval()
    x = torch.randn(5, 3, 32, 32)
    symmetric = torch.cat([x[..., :16], x[..., :16].flip(-1)], -1)  # equal to its mirror image
    with torch.no_grad():
        for level in (0, 1, 2):
            assert TTA(model, level)(x).shape == (5, 3)
        assert torch.allclose(tta_logits(model, symmetric, 1), model(symmetric), atol=1e-6)
        assert not torch.allclose(tta_logits(model, x, 1), model(x), atol=1e-4)
    with pytest.raises(ValueError, match="unknown TTA level 3"):
        TTA(model, 3)


def test_triangle_schedule_runs_from_start_to_peak_to_floor():
    s = LrSchedule("triangle", total_steps=100, warmup_steps=0, warmup_fraction=0.25, lr_start=0.2, lr_floor=0.1)
    assert s(0) == pytest.approx(0.2) and s(25) == pytest.approx(1.0) and s(100) == pytest.approx(0.1)
    assert s(12) == pytest.approx(0.2 + 0.8 * 12 / 25)
    assert np.all(np.diff([s(i) for i in range(25, 101)]) < 0)


def test_fast_recipe_trains_and_resumes_exactly(tiny_data, tmp_path):
    assert_trains_and_resumes_exactly(fast_config(), tiny_data, tmp_path)


def assert_trains_and_resumes_exactly(cfg: TrainConfig, tiny_data, tmp_path) -> None:
    full = train(cfg, tiny_data, tmp_path / "full")
    assert full.status == "completed"
    # Two epochs, then a resume: whitening, bias freezing, lookahead and alternating flip all continue.
    train(apply_overrides(cfg, {}), tiny_data, tmp_path / "cut", callbacks=[_StopAfter(2)])
    train(cfg, tiny_data, tmp_path / "cut", resume=True)
    assert untimed_metrics(tmp_path / "cut") == untimed_metrics(tmp_path / "full")


def untimed_metrics(run: Path) -> list[dict]:
    """A run's metrics.csv rows without their timings (which differ from run to run)."""
    timing = {"epoch_seconds", "elapsed_seconds", "images_per_s"}
    return [{k: v for k, v in r.items() if k not in timing} for r in read_rows(run / "metrics.csv")]


class _StopAfter:
    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if epoch == self.epochs:
            from cifar.callbacks import StopTraining

            raise StopTraining("cut")


def test_whitening_bias_freezes_after_its_epochs(tiny_data, tmp_path):
    from cifar.rundir import load_checkpoint

    cfg = fast_config(epochs=3, whiten_bias_epochs=1, lookahead=False)
    train(cfg, tiny_data, tmp_path / "a", callbacks=[_StopAfter(1)])
    after_one = load_checkpoint(tmp_path / "a" / "last.pt")["model"]["features.0.bias"]
    train(cfg, tiny_data, tmp_path / "a", resume=True)
    after_three = load_checkpoint(tmp_path / "a" / "last.pt")["model"]
    assert torch.equal(after_three["features.0.bias"], after_one)            # frozen after epoch 1
    assert not torch.equal(after_three["features.0.bias"], torch.zeros_like(after_one))  # but it did train


def test_runs_on_the_same_data_fit_the_whitening_once_and_start_alike(tiny_data, tmp_path, monkeypatch):
    fits = []
    real = PatchWhitening.fit
    monkeypatch.setattr(PatchWhitening, "fit", lambda self, images, **kw: (fits.append(1), real(self, images, **kw)))
    cfg = fast_config(epochs=1)
    fresh = dataclasses.replace(tiny_data, train=Split(tiny_data.train.x.clone(), tiny_data.train.y))
    weights = []
    for i, data in enumerate((tiny_data, tiny_data, fresh)):  # the third: other images' tensor, fitted anew
        train(apply_overrides(cfg, {"seed": i}), data, tmp_path / f"run{i}")
        weights.append(torch.load(tmp_path / f"run{i}" / "last.pt", weights_only=False)["model"]["features.0.weight"])
    assert len(fits) == 2
    assert torch.equal(weights[0], weights[1]) and torch.equal(weights[0], weights[2])  # as a fresh fit gives
