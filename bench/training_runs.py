"""The sentences the docs quote from the training side's committed runs (its ``BLOCKS``).

No benchmark writes these files: the training CLIs do. results/smallcnn/ is the
SmallCNN run of the original task (``make smallcnn``: ``cifar.train``,
``cifar.evaluate``, ``cifar.export``, then copied there), and
results/onnx/baseline-seed0-onnx_check.json is ``cifar.export``'s check of the
ONNX model of a report's baseline run against PyTorch; configs/fast*.json are
written by ``cifar.recipes`` from its values with their derivations. The cifar
package stays free of the docs, so the sentences live here; ``bench/blocks.py``
places them.

Usage:
    from bench.training_runs import BLOCKS
    print(BLOCKS["smallcnn_table"]())
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALLCNN = ROOT / "results" / "smallcnn"  # make smallcnn's committed copy of its run folder
ONNX_CHECK = ROOT / "results" / "onnx" / "baseline-seed0-onnx_check.json"


def smallcnn_throughput() -> str:
    """Training images/s of the SmallCNN run's epochs (metrics.csv)."""
    with (SMALLCNN / "metrics.csv").open() as f:
        rates = [float(r["images_per_s"]) for r in csv.DictReader(f)]
    return f"{min(rates):.0f}-{max(rates):.0f} images/s"


def smallcnn_table() -> str:
    """The SmallCNN run in numbers (test_metrics.json, results.json, metrics.csv)."""
    test = json.loads((SMALLCNN / "test_metrics.json").read_text())
    run = json.loads((SMALLCNN / "results.json").read_text())
    per_class = test["per_class_acc"]
    worst, best = min(per_class, key=per_class.get), max(per_class, key=per_class.get)
    return "\n".join([
        "| metric | value |", "|---|---|",
        f"| test accuracy (`best.pt`, epoch {test['checkpoint_epoch']}) | **{100 * test['test_acc']:.2f}%** "
        f"({test['n_test']:,} test images) |",
        f"| test loss | {test['test_loss']:.3f} |",
        f"| best val_acc (5,000 held-out training images) | {100 * run['best_val_acc']:.2f}% |",
        f"| training wall time ({run['epochs_run']} epochs, train + validation) | {run['train_seconds']:,.0f} s "
        f"= {run['train_seconds'] / 60:.1f} min |",
        f"| training throughput | {smallcnn_throughput()} |",
        f"| weakest / strongest class | {worst} {100 * per_class[worst]:.1f}% / {best} {100 * per_class[best]:.1f}% |",
    ])


def onnx_accuracy() -> str:
    """onnxruntime against PyTorch on the test set (the export's check)."""
    d = json.loads(ONNX_CHECK.read_text())
    return (f"max |logit difference| {d['max_abs_logit_diff']:.1e} over the {d['n']:,} test images, "
            f"test_acc {100 * d['acc_reference']:.2f}% in PyTorch and {100 * d['acc_candidate']:.2f}% in "
            f"onnxruntime, {d['flipped']} predictions flipped")


def recipe_values() -> str:
    """The fast recipe's every value as its source writes it, and why (cifar/recipes.py)."""
    from cifar.recipes import FAST

    rows = ["| key | value | as written | why |", "|---|---|---|---|"]
    return "\n".join(rows + [f"| `{v.key}` | {json.dumps(v.value)} | `{v.derivation}` | {v.reason} |" for v in FAST])


BLOCKS = {"recipe_values": recipe_values, "smallcnn_table": smallcnn_table, "smallcnn_throughput": smallcnn_throughput,
          "onnx_accuracy": onnx_accuracy}
