"""Test-set evaluation of a run's best checkpoint, with figures.

Writes ``test_metrics.json`` (test loss and accuracy, per-class accuracy,
confusion matrix) and ``plots/curves.png``, ``plots/misclassified.png`` and
``plots/confusion.png`` into the run directory. This is the only place, with
the report, that reads the test set; model selection never does.

Usage:
    python -m cifar.evaluate runs/smallcnn [--data-dir DIR] [--device cpu]
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cifar import seal  # noqa: E402
from cifar.cli import ArgParser, UsageError, add_tta_option, fail  # noqa: E402
from cifar.config import TrainConfig, apply_overrides  # noqa: E402
from cifar.data import CifarData, prepare_data  # noqa: E402
from cifar.loop import predict  # noqa: E402
from cifar.pipeline import Pipeline  # noqa: E402
from cifar.rundir import Predictions, RunDir, TestMetrics, model_from_checkpoint, read_checkpoint  # noqa: E402
from cifar.runtime import memory_format, resolve_device  # noqa: E402
from cifar.tta import REPORTED, TTA  # noqa: E402


def compute_test_metrics(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> TestMetrics:
    """Loss, accuracy, per-class accuracy and confusion matrix (rows: true, columns: predicted)."""
    preds = logits.argmax(1)
    k = len(classes)
    confusion = torch.bincount(labels * k + preds, minlength=k * k).view(k, k)
    per_class = confusion.diag().double() / confusion.sum(1).clamp(min=1)
    return TestMetrics(test_loss=F.cross_entropy(logits, labels).item(),
                       test_acc=(preds == labels).double().mean().item(), n_test=len(labels),
                       per_class_acc=dict(zip(classes, per_class.tolist())), confusion=confusion.tolist())


def plot_curves(history: list[dict[str, float]]) -> plt.Figure:
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = [r["epoch"] for r in history]
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "acc")):
        for split, style in (("train", "-"), ("val", "--")):
            ax.plot(epochs, [r[f"{split}_{metric}"] for r in history], style, marker="o",
                    markersize=3, label=f"{split}_{metric}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Training curves (train metrics: augmented images, loss with label smoothing)")
    # Fixed margins for this fixed size: tight_layout drew the figure once more to find them, a third
    # of the time a study trial spends on its curve (which it draws for the dashboard every trial).
    fig.subplots_adjust(left=0.07, right=0.985, bottom=0.13, top=0.88, wspace=0.2)
    return fig


def plot_misclassified(images: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor,
                       classes: list[str], n: int = 32) -> plt.Figure:
    """A grid of ``n`` misclassified uint8 images (a fixed random sample) with true/predicted class."""
    conf, preds = probs.max(1)
    wrong = torch.nonzero(preds != labels).flatten()
    # The test set is ordered by class: sample across it, the same images every time.
    pick = torch.randperm(len(wrong), generator=torch.Generator().manual_seed(0))[:n]
    wrong = wrong[pick.sort().values]
    cols = 8
    rows = max(1, math.ceil(len(wrong) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.9), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong.tolist()):
        ax.imshow(images[i].permute(1, 2, 0).numpy())
        ax.set_title(f"{classes[labels[i]]}\n→ {classes[preds[i]]} {conf[i]:.0%}", fontsize=8)
    fig.suptitle("Misclassified test images: true → predicted (confidence)")
    fig.tight_layout()
    return fig


def plot_confusion(confusion: list[list[int]], classes: list[str]) -> plt.Figure:
    cm = torch.tensor(confusion, dtype=torch.float64)
    share = cm / cm.sum(1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(share.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, label="share of true class")
    fig.suptitle("Test confusion matrix")
    fig.tight_layout()
    return fig


@dataclass
class BestModel:
    """A run's best.pt ready to predict: the model on ``device``, its config and its checkpoint."""
    model: torch.nn.Module
    cfg: TrainConfig
    ckpt: dict[str, Any]
    device: torch.device
    digest: str  # of the bytes it was loaded from (a test read names what it read)

    @classmethod
    def load(cls, run: RunDir, device: str = "auto", data_dir: str | None = None) -> BestModel:
        """``data_dir``: where its data is now, where not where it was trained."""
        ckpt, raw = read_checkpoint(run.best)
        model, cfg = model_from_checkpoint(ckpt)
        if data_dir is not None:
            cfg = apply_overrides(cfg, {"data_dir": data_dir})
        dev = resolve_device(device)
        digest = hashlib.sha256(raw).hexdigest()[:16]
        return cls(model.to(dev, memory_format=memory_format(cfg)), cfg, ckpt, dev, digest)

    def batches(self, split) -> Pipeline:
        """``split`` in evaluation batches, normalised as in training, whatever the data looks like now."""
        stats = self.ckpt["data_stats"]
        return Pipeline(split, self.cfg, stats["mean"], stats["std"], self.device, train=False)


def val_accuracy(run_dir: str | Path, data: CifarData, tta: int, device: str = "auto") -> float:
    """Validation accuracy of a run's best.pt predicting at TTA level ``tta``: a study's score for a
    trial whose TTA level is searched (the test set is not read)."""
    best = BestModel.load(RunDir(run_dir), device)
    logits, labels = predict(TTA(best.model, tta), best.batches(data.val))
    return (logits.argmax(1) == labels).double().mean().item()


def earlier_read(run: RunDir) -> TestMetrics | None:
    """The run's test metrics as an earlier read wrote them; None where none is or it cannot be read."""
    try:
        return run.read_test_metrics() if run.test_metrics.is_file() else None
    except (ValueError, TypeError):
        return None


def evaluate_run(run_dir: str | Path, data_dir: str | None = None, device: str = "auto",
                 data: CifarData | None = None, tta: int = REPORTED) -> TestMetrics:
    """Evaluate best.pt of a run on the test set and write metrics and figures into the run.

    Accuracy and loss are measured plain and, beside them, with test-time augmentation
    of level ``tta`` (0: plain only). ``data`` saves reloading when the caller holds it.
    """
    seal.check_open(f"evaluate_run({run_dir})")
    run = RunDir(run_dir)
    best = BestModel.load(run, device, data_dir)
    model, ckpt, data = best.model, best.ckpt, data or prepare_data(best.cfg.data)
    batches = best.batches(data.test)
    logits, labels = predict(model, batches)
    metrics = compute_test_metrics(logits, labels, ckpt["classes"])
    metrics.checkpoint_epoch, metrics.val_acc = ckpt["epoch"], ckpt["metrics"][-1]["val_acc"]
    metrics.read_of = f"{best.digest}:{hashlib.sha256(labels.cpu().numpy().tobytes()).hexdigest()[:16]}"
    before = earlier_read(run)
    if before and before.read_of == metrics.read_of:  # the levels read before, of this checkpoint and test set
        metrics.test_acc_by_tta = dict(before.test_acc_by_tta)
    if tta:
        tta_logits, _ = predict(TTA(model, tta), batches)
        metrics.tta_level = tta
        metrics.test_acc_tta = (tta_logits.argmax(1) == labels).double().mean().item()
        metrics.test_loss_tta = F.cross_entropy(tta_logits, labels).item()
        metrics.test_acc_by_tta[str(tta)] = metrics.test_acc_tta
    run.write_test_metrics(metrics)
    probs = logits.softmax(1)
    # Per-image predictions, for comparisons between runs (which images a change fixed or broke).
    run.write_predictions(Predictions(pred=probs.argmax(1), conf=probs.max(1).values, label=labels))

    run.plots.mkdir(exist_ok=True)
    figures = {
        "curves.png": plot_curves(run.read_history()),
        "misclassified.png": plot_misclassified(data.test.x, labels, probs, ckpt["classes"]),
        "confusion.png": plot_confusion(metrics.confusion, ckpt["classes"]),
    }
    for name, fig in figures.items():
        fig.savefig(run.plots / name, dpi=110)
        plt.close(fig)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgParser(prog="python -m cifar.evaluate", description="Test-set evaluation of a run's best.pt.")
    parser.add_argument("run_dir", help="run directory holding best.pt and metrics.csv")
    parser.add_argument("--data-dir", default=None, help="data location (default: the run's)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    add_tta_option(parser, REPORTED, "test-time augmentation measured beside plain")
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        return fail(e)
    try:
        m = evaluate_run(args.run_dir, args.data_dir, args.device, tta=args.tta)
    except (ValueError, FileNotFoundError) as e:
        return fail(e)
    worst = min(m.per_class_acc, key=m.per_class_acc.get)
    run = RunDir(args.run_dir)
    tta = f"test_acc with TTA {m.test_acc_tta:.4f} (level {m.tta_level})  " if m.tta_level else ""
    print(f"test_acc {m.test_acc:.4f}  {tta}test_loss {m.test_loss:.4f}  "
          f"(n={m.n_test}, checkpoint epoch {m.checkpoint_epoch}, worst class {worst} "
          f"{m.per_class_acc[worst]:.3f}); wrote {run.test_metrics} and {run.plots}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
