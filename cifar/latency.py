"""What a config costs at inference, known before training: its ONNX graph timed with ONNX Runtime.

Latency depends on the architecture and the test-time augmentation level, not on the weights, so
the model is built untrained (``build_model``), wrapped as ``cifar.export`` wraps a trained one
(uint8 images in, normalisation inside, TTA views averaged in the graph), exported, and timed on
this machine: for each batch size, ``repeats`` timed calls after ``warmup`` untimed ones, the batch
sizes interleaved call by call so that a machine's drift falls on all of them alike. Each batch size
gets its median, p90 and interquartile spread in milliseconds per call, and the throughput batch
its images per second. A study measures each architecture once (``cached_cost``): a file per model
config, TTA level, machine and version of the graph's code (``graph_code``) under the cache directory,
so that trials of one architecture cost the same (measured anew, the same graph differed by up to 7%
between trials of one study here) and a study's later trials spend no time on it.

Usage:
    cost = inference_cost(cfg, tta=2)     # {"batch_1": {...}, "batch_64": {...}, "onnx_bytes": ...}
    cost = cached_cost(cfg, 2, Path("runs/latency"))   # the same, measured once per machine
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from cifar.config import TrainConfig
from cifar.export import ImageClassifier, export_onnx, onnx_session
from cifar.model import build_model
from cifar.sources import IMAGE_SIZE

BATCHES = (1, 64)  # one request, and a throughput batch
TRAINING_ONLY = ("dropout", "bn_momentum", "dirac_init")  # model fields the inference graph does not depend on
NEUTRAL_STATS = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))  # any normalisation costs the same


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile, interpolated linearly (numpy's default)."""
    return float(np.quantile(np.asarray(values), q))


def export_untrained(cfg: TrainConfig, tta: int, out: Path) -> Path:
    """``cfg``'s model, untrained, as the deployable ONNX graph (normalisation and TTA inside)."""
    net = build_model(TrainConfig.from_dict({**cfg.to_dict(), "device": "cpu", "low_memory": False})).eval()
    return export_onnx(ImageClassifier(net, *NEUTRAL_STATS, tta=tta).eval(), [], out)


def time_session(session, batches: tuple[int, ...] = BATCHES, repeats: int = 60, warmup: int = 5,
                 seed: int = 0, budget_s: float = float("inf"), min_repeats: int = 10) -> dict[str, dict[str, float]]:
    """Per batch size: milliseconds per call (median, p90, interquartile spread) over ``repeats`` calls,
    the sizes interleaved (fewer, ``min_repeats`` at least, where the calls have taken ``budget_s``
    seconds: a wide model with TTA takes a second per throughput batch); images per second at the median."""
    rng = np.random.default_rng(seed)
    inputs = {b: rng.integers(0, 256, (b, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8) for b in batches}
    for _ in range(warmup):
        for b in batches:
            session.run(["logits"], {"images": inputs[b]})
    times: dict[int, list[float]] = {b: [] for b in batches}
    began = time.perf_counter()
    for i in range(repeats):
        for b in batches:
            start = time.perf_counter()
            session.run(["logits"], {"images": inputs[b]})
            times[b].append(1000 * (time.perf_counter() - start))
        if i + 1 >= min_repeats and time.perf_counter() - began > budget_s:
            break
    return {f"batch_{b}": {"median_ms": round(statistics.median(t), 4), "p90_ms": round(quantile(t, 0.9), 4),
                           "iqr_ms": round(quantile(t, 0.75) - quantile(t, 0.25), 4), "repeats": len(t),
                           "images_per_s": round(1000 * b / statistics.median(t), 1)}
            for b, t in times.items()}


def inference_cost(cfg: TrainConfig, tta: int = 0, batches: tuple[int, ...] = BATCHES, repeats: int = 60,
                   warmup: int = 5, budget_s: float = 8.0) -> dict[str, Any]:
    """The ONNX latency of ``cfg``'s model at TTA level ``tta`` on this machine, before any training."""
    with tempfile.TemporaryDirectory() as tmp:
        path = export_untrained(cfg, tta, Path(tmp) / "model.onnx")
        session, _ = onnx_session(path)
        timed = time_session(session, batches, repeats, warmup, budget_s=budget_s)
        size = path.stat().st_size
    return {"tta": tta, "onnx_bytes": size, "machine": machine(), **timed}


def machine() -> dict[str, Any]:
    """What a latency holds for: this machine (its name, processor and CPUs) and ONNX Runtime's version."""
    import onnxruntime

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    return {"node": platform.node(), "cpu": cpu, "cpus": os.cpu_count(), "onnxruntime": onnxruntime.__version__}


GRAPH_FILES = ("model.py", "pool.py", "recompute.py", "pipeline.py", "tta.py", "export.py", "latency.py")


@functools.cache
def graph_code() -> dict[str, str]:
    """What the timed graph is made by: the exporter's packages and a digest of the code that builds,
    exports and times it (``GRAPH_FILES``, as this process read them first), so that a cached latency is
    measured again when one of them changes."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "none"

    code = b"".join(Path(__file__).with_name(name).read_bytes() for name in GRAPH_FILES)
    return {"torch": torch.__version__, **{name: installed(name) for name in ("onnx", "onnxscript")},
            "code": hashlib.sha256(code).hexdigest()[:12]}


def cached_cost(cfg: TrainConfig, tta: int, cache_dir: Path, **timing: Any) -> dict[str, Any]:
    """``inference_cost``, measured once per model config, TTA level and machine: read from ``cache_dir``
    where measured before (``"cached": true``), else measured and written there."""
    model = {k: v for k, v in dataclasses.asdict(cfg.model).items() if k not in TRAINING_ONLY}
    key = {"model": model, "tta": tta, "machine": machine(), "graph": graph_code()}
    path = Path(cache_dir) / (hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20] + ".json")
    if path.exists():
        stored = json.loads(path.read_text())
        return {**stored["cost"], "machine": stored["machine"], "cached": True}
    cost = inference_cost(cfg, tta, **timing)
    if path.exists():  # a worker beside this one measured it meanwhile: its figure, so that twins cost the same
        return cached_cost(cfg, tta, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({**key, "cost": cost, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
    tmp.replace(path)  # atomic: a worker measuring beside this one reads a whole file or none
    return {**cost, "cached": False}
