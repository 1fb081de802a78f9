"""cifar/latency.py: a config's inference cost, measured on its untrained ONNX graph before training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cifar.config import ModelConfig
from cifar.export import ImageClassifier, onnx_session
from cifar.latency import NEUTRAL_STATS, export_untrained, inference_cost, time_session
from cifar.model import build_model
from tests.conftest import tiny_config


def test_the_untrained_graph_is_the_model_a_run_deploys(tmp_path):
    """The timed graph computes what the PyTorch model it was built from computes, TTA views included."""
    cfg = tiny_config()
    torch.manual_seed(0)
    path = export_untrained(cfg, 2, tmp_path / "m.onnx")
    torch.manual_seed(0)  # the same initial weights again
    reference = ImageClassifier(build_model(cfg).eval(), *NEUTRAL_STATS, tta=2).eval()
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    session, _ = onnx_session(path)
    with torch.no_grad():
        expected = reference(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(session.run(["logits"], {"images": images})[0], expected, atol=1e-4)


def test_the_cost_has_each_batch_size_with_its_spread():
    """What is stored (no timing is asserted: a test on a shared machine cannot promise one)."""
    cfg = tiny_config(model=ModelConfig(widths=(32, 64), depth=1, stem_width=0, num_classes=10))
    cost = inference_cost(cfg, tta=2, repeats=15)
    assert set(cost) == {"tta", "onnx_bytes", "machine", "batch_1", "batch_64"} and cost["onnx_bytes"] > 0
    for b in ("batch_1", "batch_64"):
        c = cost[b]
        assert 0 < c["median_ms"] <= c["p90_ms"] and c["iqr_ms"] >= 0 and c["repeats"] == 15


def test_batch_sizes_are_timed_interleaved():
    calls = []

    class Session:
        def run(self, outputs, feeds):
            calls.append(len(feeds["images"]))
            return [np.zeros((len(feeds["images"]), 10), np.float32)]

    timed = time_session(Session(), batches=(1, 8), repeats=3, warmup=1)
    assert calls == [1, 8] * 4 and set(timed) == {"batch_1", "batch_8"}


def test_an_architecture_is_timed_once_per_machine(tmp_path, monkeypatch):
    """The cache's key is what the graph depends on: the architecture, the TTA level, the machine and the
    code that builds it, not dropout or other training-only fields."""
    import cifar.latency as latency

    calls = []
    monkeypatch.setattr(latency, "inference_cost", lambda cfg, tta, **kw: calls.append(tta) or {"tta": tta})
    cfg = tiny_config()
    assert latency.cached_cost(cfg, 1, tmp_path)["cached"] is False
    assert latency.cached_cost(tiny_config(dropout=0.3, bn_momentum=0.4), 1, tmp_path)["cached"] is True
    assert latency.cached_cost(cfg, 2, tmp_path)["cached"] is False  # another TTA level: another graph
    assert latency.cached_cost(tiny_config(depth=2), 1, tmp_path)["cached"] is False
    monkeypatch.setattr(latency, "machine", lambda: {"node": "elsewhere"})
    assert latency.cached_cost(cfg, 1, tmp_path)["cached"] is False  # another machine times it again
    assert latency.cached_cost(cfg, 1, tmp_path)["cached"] is True
    monkeypatch.setattr(latency, "graph_code", lambda: {"torch": "another", "code": "another"})
    assert latency.cached_cost(cfg, 1, tmp_path)["cached"] is False  # another torch or export: another graph
    assert calls == [1, 2, 1, 1, 1] and len(list(tmp_path.glob("*.json"))) == 5


def test_the_graph_code_changes_with_any_file_the_graph_comes_from(tmp_path, monkeypatch):
    """The digest reads every file that builds, exports or times the graph (the model's layers, the
    normalisation, TTA, the export), as this process first read them; and the exporter's packages."""
    import cifar.latency as latency

    first = latency.graph_code()
    assert {"torch", "onnx", "onnxscript"} < set(first) and first["torch"] == torch.__version__
    names = latency.GRAPH_FILES
    originals = {name: Path(latency.__file__).with_name(name).read_text() for name in names}
    monkeypatch.setattr(latency, "__file__", str(tmp_path / "latency.py"))
    for changed in names:
        for name in names:
            (tmp_path / name).write_text(originals[name] + ("# changed\n" if name == changed else ""))
        latency.graph_code.cache_clear()
        assert latency.graph_code()["code"] != first["code"], changed
    for name in names:
        (tmp_path / name).write_text(originals[name])
    latency.graph_code.cache_clear()
    assert latency.graph_code() == first  # the same code, the same digest
    latency.graph_code.cache_clear()


def test_a_latency_measured_twice_at_once_is_the_first_one_written(tmp_path, monkeypatch):
    """Two workers missing one architecture at once: both measure, both keep the figure written first."""
    import cifar.latency as latency

    def measured_while_another_wrote(cfg, tta, **kw):
        monkeypatch.setattr(latency, "inference_cost", lambda cfg, tta, **kw: {"by": "the other"})
        latency.cached_cost(cfg, tta, tmp_path)  # the other worker, finishing first
        return {"by": "this one"}
    monkeypatch.setattr(latency, "inference_cost", measured_while_another_wrote)
    got = latency.cached_cost(tiny_config(), 0, tmp_path)
    assert got["by"] == "the other" and got["cached"] is True
