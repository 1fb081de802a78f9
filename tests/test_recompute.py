"""low_memory: BatchNorm and activation outputs recomputed in the backward pass, with the same results."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch

from cifar import pool
from cifar.config import ModelConfig, TrainConfig
from cifar.model import SmallCNN, keep_less
from cifar.rundir import identity
from cifar.train import train
from tests.conftest import CLASSES
from tests.test_pool import saved_tensors
from tests.test_recipe import FAST_MODEL, assert_trains_and_resumes_exactly, fast_config, untimed_metrics
from tests.test_train import FAULTS_OF_REUSE

RELU_MODEL = ModelConfig(widths=(8, 16), depth=2, stem_width=0, dropout=0.0, num_classes=len(CLASSES))


def two_steps(model: SmallCNN, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    """Losses, then every gradient, parameter and buffer after two SGD steps."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(2):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.2)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return [*losses, *grads, *model.parameters(), *model.buffers()]


@pytest.mark.parametrize("cfg", [FAST_MODEL, RELU_MODEL], ids=["whiten-gelu-no-scale", "relu-no-stem"])
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format], ids=["nhwc", "nchw"])
def test_recomputed_training_steps_equal_the_usual_ones_bit_for_bit(cfg, layout):
    torch.manual_seed(0)
    usual = SmallCNN(cfg).to(memory_format=layout).train()
    with torch.no_grad():  # away from the init, where a Dirac filter or a zero bias could hide a mistake
        for p in usual.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    if usual.whitening is not None:
        usual.whitening.fit(torch.randn(16, 3, 32, 32))
    lean = copy.deepcopy(usual)
    keep_less(lean)
    x = torch.randn(12, 3, 32, 32).to(memory_format=layout)
    y = torch.randint(0, len(CLASSES), (12,))
    expected, got = two_steps(usual, x, y), two_steps(lean, x, y)
    assert len(got) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    norms = [m for m in lean.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert [int(m.num_batches_tracked) for m in norms] == [2] * len(norms)  # updated once a step


def test_low_memory_is_fp32_only():
    with pytest.raises(ValueError, match="low_memory recomputes in fp32 only"):
        TrainConfig(low_memory=True, amp="bf16")
    assert TrainConfig(low_memory=True, amp="auto").low_memory  # auto stays fp32 on a CPU


def test_a_third_of_the_bn_activation_outputs_are_kept(monkeypatch):
    monkeypatch.delenv(pool.ENV, raising=False)  # max_pool2d: it keeps its input, one more 7x7 tensor
    cfg = TrainConfig.from_json("configs/fast.json").model
    x = torch.randn(4, 3, 32, 32).to(memory_format=torch.channels_last)
    model = SmallCNN(cfg).to(memory_format=torch.channels_last).train()

    def kept(shape):  # distinct float tensors of this shape that autograd keeps for the backward pass
        return len({t.data_ptr() for t in saved_tensors(model, x) if t.shape == shape and t.is_floating_point()})

    usual = {s: kept(s) for s in [(4, 64, 15, 15), (4, 128, 7, 7), (4, 24, 31, 31)]}
    model.recompute = True
    lean = {s: kept(s) for s in usual}
    # per stage: BatchNorm's input, the activation's input and the next convolution's input, twice
    assert usual == {(4, 64, 15, 15): 6, (4, 128, 7, 7): 6 + 1, (4, 24, 31, 31): 2}
    assert lean == {(4, 64, 15, 15): 2, (4, 128, 7, 7): 2 + 1, (4, 24, 31, 31): 1}


@pytest.mark.parametrize("cfg", [
    ModelConfig(widths=(8, 16), depth=2, block="residual", stem_width=0, num_classes=len(CLASSES)),
    ModelConfig(widths=(8, 16), depth=1, stem_width=8, dropout=0.0, num_classes=len(CLASSES)),
    ModelConfig(widths=(8, 16), depth=1, stem_width=0, dropout=0.25, num_classes=len(CLASSES)),
], ids=["residual", "conv-stem", "dropout"])
def test_models_it_cannot_chain_take_the_usual_path(cfg, monkeypatch):
    model = SmallCNN(cfg).train()
    model.recompute = True
    monkeypatch.setattr(SmallCNN, "_forward_recomputed", lambda self, x: pytest.fail("chained an unchainable model"))
    model(torch.randn(2, 3, 32, 32)).sum().backward()


def test_evaluation_takes_the_usual_path(monkeypatch):
    model = SmallCNN(FAST_MODEL)
    keep_less(model)
    monkeypatch.setattr(SmallCNN, "_forward_recomputed", lambda self, x: pytest.fail("recomputed outside training"))
    model.eval()(torch.randn(2, 3, 32, 32))
    with torch.no_grad():
        model.train()(torch.randn(2, 3, 32, 32))


def test_a_low_memory_run_has_the_usual_runs_metrics_and_resumes_exactly(tiny_data, tmp_path):
    train(fast_config(), tiny_data, tmp_path / "usual")
    assert_trains_and_resumes_exactly(fast_config(low_memory=True), tiny_data, tmp_path)
    assert untimed_metrics(tmp_path / "full") == untimed_metrics(tmp_path / "usual")


def test_low_memory_enters_the_run_identity_only_when_on():
    assert "low_memory" not in identity(TrainConfig())
    assert identity(TrainConfig(low_memory=True))["low_memory"] is True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc is Linux's")
def test_low_memory_returns_freed_memory_even_after_a_run_kept_it():
    # a study's process, say: a run kept freed memory, then a low_memory run returns it
    script = FAULTS_OF_REUSE.replace('print(keep_freed_memory(torch.device("cpu")))',
                                     'keep_freed_memory(torch.device("cpu")); from cifar.runtime import '
                                     'return_freed_memory; print(return_freed_memory(torch.device("cpu")))')
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env={**os.environ, "CIFAR_MALLOC": "keep"}).stdout.splitlines()
    assert out[0] == "glibc, blocks of 1 MB and more returned when freed"
    assert int(out[-1]) > 40 * 16_384 * 0.9  # each 64 MB block mapped afresh: the peak follows what is held
