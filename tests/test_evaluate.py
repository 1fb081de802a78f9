"""Evaluation: exact metrics on fixtures, figures build, the CLI writes its files."""

from __future__ import annotations

import json

import pytest
import torch

from cifar.evaluate import compute_test_metrics, main, plot_confusion, plot_curves, plot_misclassified
from cifar.train import train
from tests.conftest import tiny_config


def test_compute_test_metrics_exact():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    preds = torch.tensor([0, 1, 1, 1, 2, 0])
    logits = torch.nn.functional.one_hot(preds, 3).float() * 10
    m = compute_test_metrics(logits, labels, ["a", "b", "c"])
    assert m.test_acc == pytest.approx(4 / 6)
    assert m.per_class_acc == {"a": 0.5, "b": 1.0, "c": 0.5}
    assert m.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m.n_test == 6


def test_figures_build():
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "train_acc": 0.5, "val_acc": 0.4}
               for e in (1, 2, 3)]
    assert len(plot_curves(history).axes) == 2
    images = torch.randint(0, 255, (5, 3, 32, 32), dtype=torch.uint8)
    probs = torch.softmax(torch.randn(5, 3), 1)
    labels = (probs.argmax(1) + 1) % 3  # all wrong
    fig = plot_misclassified(images, labels, probs, ["a", "b", "c"], n=4)
    assert sum(1 for ax in fig.axes if ax.images) == 4
    assert plot_confusion([[1, 0], [2, 3]], ["a", "b"]).axes


def test_cli_writes_metrics_and_plots(image_folder, tmp_path, capsys):
    from cifar.data import prepare_data

    cfg = tiny_config(data_dir=str(image_folder), cache_dir=str(tmp_path / "cache"))
    run = tmp_path / "run"
    train(cfg, prepare_data(cfg.data), run)
    assert main([str(run)]) == 0
    m = json.loads((run / "test_metrics.json").read_text())
    assert m["n_test"] == 9 and 0 <= m["test_acc"] <= 1
    assert sum(map(sum, m["confusion"])) == 9
    for name in ("curves.png", "misclassified.png", "confusion.png"):
        assert (run / "plots" / name).stat().st_size > 1000
    assert "test_acc" in capsys.readouterr().out


def test_every_tta_level_measured_stays_on_record(image_folder, tmp_path, monkeypatch):
    """A test read at another TTA level (a Pareto pick's) keeps the levels read before of the same checkpoint
    and test set, so a run shared by two reports answers each at its own level, whichever reads first;
    another checkpoint, or a file that cannot be read, starts a new record."""
    from cifar.data import prepare_data
    from cifar.evaluate import evaluate_run
    from cifar.rundir import RunDir
    from reports.runs import ensure_tested, test_acc_at, tested_at

    cfg = tiny_config(data_dir=str(image_folder), cache_dir=str(tmp_path / "cache"))
    run, data = tmp_path / "run", prepare_data(cfg.data)
    train(cfg, data, run)
    at_1 = evaluate_run(run, data=data, tta=1).test_acc_tta  # the Pareto report's pick, at level 1, first
    assert tested_at(run, 1) and not tested_at(run, 2)
    reads = ensure_tested({"tuned": [run]}, ["tuned"], data)  # then the verdict report, at its level
    metrics = RunDir(run).read_test_metrics()
    assert reads[0]["evaluated_now"] == 1 and metrics.tta_level == 2
    assert metrics.test_acc_by_tta == {"1": at_1, "2": metrics.test_acc_tta}
    assert (test_acc_at(run, 1), test_acc_at(run, 2), test_acc_at(run, 0)) == (
        at_1, metrics.test_acc_tta, metrics.test_acc)
    assert ensure_tested({"tuned": [run]}, ["tuned"], data)[0]["evaluated_now"] == 0  # read once

    stored = json.loads(RunDir(run).test_metrics.read_text())
    import hashlib

    import cifar.rundir

    # The record names the bytes that were loaded, even where best.pt is rewritten as they load.
    first, load = RunDir(run).best.read_bytes(), cifar.rundir.torch.load
    assert stored["read_of"].split(":")[0] == hashlib.sha256(first).hexdigest()[:16]

    def load_then_rewrite(*a, **kw):
        out = load(*a, **kw)
        RunDir(run).best.write_bytes(first + b"rewritten")
        return out

    monkeypatch.setattr(cifar.rundir.torch, "load", load_then_rewrite)
    read_of = evaluate_run(run, data=data, tta=1).read_of
    monkeypatch.undo()
    RunDir(run).best.write_bytes(first)
    assert read_of.split(":")[0] == hashlib.sha256(first).hexdigest()[:16]
    RunDir(run).test_metrics.write_text(json.dumps({**stored, "read_of": "another best.pt:"}))
    evaluate_run(run, data=data, tta=1)
    assert RunDir(run).read_test_metrics().test_acc_by_tta == {"1": at_1} and not tested_at(run, 2)
    RunDir(run).test_metrics.write_text('{"test_acc": 0.5, "trunc')  # cut short
    assert evaluate_run(run, data=data, tta=1).test_acc_by_tta == {"1": at_1}

    legacy = {k: v for k, v in stored.items() if k not in ("test_acc_by_tta", "read_of")}  # before the record
    RunDir(run).test_metrics.write_text(json.dumps(legacy))
    assert test_acc_at(run, 2) == stored["test_acc_tta"] and not tested_at(run, 1)
