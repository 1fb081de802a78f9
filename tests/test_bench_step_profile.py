"""bench/step_profile.py: each layer's passes are timed and named, and a convolution's FLOPs are its shapes'."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from bench.memory import train_model
from bench.step_profile import LayerTimer, main, summarise
from cifar.config import TrainConfig, apply_overrides

FAST = "configs/fast.json"


def test_each_layer_is_timed_and_a_convolutions_flops_follow_its_shapes():
    cfg = apply_overrides(TrainConfig.from_json(FAST), {"widths": "8,16", "depth": 1})
    model, layout = train_model(cfg)
    timer = LayerTimer(model)
    x = torch.randn(4, 3, 32, 32).to(memory_format=layout)
    timer.on = True
    F.cross_entropy(model(x), torch.zeros(4, dtype=torch.int64)).backward()

    names = set(timer.seconds)
    assert {"conv 3x32x32 -> 24, 2x2", "conv 24x31x31 -> 8, 3x3", "conv 8x15x15 -> 16, 3x3",
            "batchnorm", "activation", "max pooling"} <= names
    assert all(v["forward"] > 0 for v in timer.seconds.values())
    assert timer.seconds["conv 8x15x15 -> 16, 3x3"]["backward"] > 0
    # 3x3 conv, padding 1: every output (4 x 16 x 15 x 15) is 8 x 3 x 3 multiply-adds
    first_stage = timer.flops["conv 8x15x15 -> 16, 3x3"]
    assert first_stage["forward"] == 2 * 4 * 16 * 15 * 15 * 8 * 9
    assert first_stage["backward"] == 2 * first_stage["forward"]  # the input's gradient and the weight's
    # the whitening layer: frozen filters, an input that needs no gradient: no convolution backward
    assert timer.flops["conv 3x32x32 -> 24, 2x2"]["backward"] == 0


def test_the_step_is_split_whole_among_the_layers_and_the_rest():
    def one(bn: float) -> dict:
        layers = {"conv a": {"forward": 0.2, "backward": 0.4}, "batchnorm": {"forward": bn, "backward": bn}}
        return {"step_s": 1.0, "layers": layers}

    rounds = [one(0.1), one(0.05)]
    s = summarise(rounds, {"conv a": {"forward": 10**9, "backward": 2 * 10**9}}, flops_per_image=10**6, batch=100,
                  matmul=1.0)
    assert s["share_of_step"] == pytest.approx({"conv": 0.6, "batchnorm": 0.15,
                                                "rest (loss, head, optimizer, autograd)": 0.25})
    assert s["conv_only_gflops_per_s"] == pytest.approx(0.3 / 0.6)  # 3 x 1 MFLOP x 100 images in 0.6 s
    (conv,) = [row for row in s["layers"] if row["layer"] == "conv a"]
    assert conv["forward_gflops_per_s"] == pytest.approx(5.0) and conv["backward_gflops_per_s"] == pytest.approx(5.0)


def test_the_script_writes_its_result(tmp_path):
    out = tmp_path / "profile.json"
    assert main(["--set", "widths=8,16", "--set", "depth=1", "--batch-size", "8", "--steps", "1",
                 "--rounds", "1", "--warmup", "0", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["overrides"] == {"widths": "8,16", "depth": "1"} and len(d["machine"]["matmul_gflops"]) == 2
    assert sum(d["share_of_step"].values()) == pytest.approx(1.0, abs=0.01)


def test_a_bad_override_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--set", "widths"])
    assert exit_.value.code == 2 and "--set takes KEY=VALUE" in capsys.readouterr().err
