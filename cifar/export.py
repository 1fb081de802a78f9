"""ONNX export of a run's best checkpoint, verified against PyTorch with onnxruntime.

The exported graph takes **uint8 images, NCHW, shape (N, 3, 32, 32), RGB, values
0-255** (what decoding a PNG or JPEG gives) with a dynamic batch size N, and
returns float32 logits (N, 10). The normalisation learned from the training
split is inside the graph, so a caller needs no preprocessing beyond resizing
to 32x32. Class names are stored in the model's metadata (``classes``, JSON).

Verification: on the test set, the largest absolute logit difference between
onnxruntime and PyTorch must stay under 1e-4, and the two test accuracies may
differ only by predictions that flipped on a near-tie (top-2 logit gap under
1e-3).

Usage:
    python -m cifar.export runs/smallcnn [--out runs/smallcnn/model.onnx] [--data-dir DIR] [--no-verify]
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cifar.cli import ArgParser, UsageError, add_tta_option, fail
from cifar.pipeline import Normalize
from cifar.rundir import RunDir, load_checkpoint, model_from_checkpoint
from cifar.sources import IMAGE_SIZE, DataError, load_cifar10
from cifar.tta import TTA, TTA_LEVELS

OPSET = 18
MAX_LOGIT_DIFF = 1e-4
NEAR_TIE = 1e-3


class ImageClassifier(nn.Module):
    """SmallCNN with its input normalisation (and optionally test-time augmentation):
    uint8 (N, 3, 32, 32) images in, logits out."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float], tta: int = 0):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = TTA(net, tta) if tta else net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(images))


def classifier_from_checkpoint(path: str | Path, tta: int = 0) -> tuple[ImageClassifier, list[str], dict[str, Any]]:
    """The eval-mode classifier of a checkpoint (with TTA of level ``tta``), its class names and the checkpoint."""
    ckpt = load_checkpoint(path)
    net, _ = model_from_checkpoint(ckpt)
    stats = ckpt["data_stats"]
    return ImageClassifier(net, stats["mean"], stats["std"], tta).eval(), list(ckpt["classes"]), ckpt


def export_onnx(model: ImageClassifier, classes: list[str], out: str | Path) -> Path:
    """Write ``model`` as ONNX with a dynamic batch dimension and check it with onnx.checker."""
    import onnx

    out = Path(out)
    example = torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation chatter
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=OPSET,
                                    input_names=["images"], output_names=["logits"],
                                    dynamic_shapes={"images": {0: batch}}, verbose=False)
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {"classes": json.dumps(classes)})
    tmp = out.with_name(f".{out.name}.tmp")
    onnx.save_model(proto, tmp)
    onnx.checker.check_model(str(tmp), full_check=True)
    tmp.replace(out)
    return out


def onnx_session(path: str | Path):
    """An onnxruntime CPU session and the class names stored in the model."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own types for unreadable or invalid models
        raise ValueError(f"cannot load ONNX model {path}: {str(e).splitlines()[0]}") from None
    meta = session.get_modelmeta().custom_metadata_map
    return session, json.loads(meta.get("classes", "[]"))


def run_session(session, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    return np.concatenate([session.run(["logits"], {"images": images[i:i + batch_size]})[0]
                           for i in range(0, len(images), batch_size)])


@torch.no_grad()
def run_torch(model: nn.Module, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    return np.concatenate([model(torch.from_numpy(images[i:i + batch_size])).numpy()
                           for i in range(0, len(images), batch_size)])


def compare(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Logit agreement and test accuracy of two sets of logits over the same images."""
    ref_pred, cand_pred = reference.argmax(1), candidate.argmax(1)
    top2 = np.sort(reference, axis=1)[:, -2:]
    flipped = np.flatnonzero(ref_pred != cand_pred)
    near_tie = (top2[:, 1] - top2[:, 0]) < NEAR_TIE
    return {
        "n": int(len(labels)),
        "max_abs_logit_diff": float(np.abs(reference - candidate).max()) if len(labels) else 0.0,
        "acc_reference": float((ref_pred == labels).mean()),
        "acc_candidate": float((cand_pred == labels).mean()),
        "flipped": int(len(flipped)),
        "flipped_not_near_tie": int((~near_tie[flipped]).sum()),
    }


def verify(model: ImageClassifier, onnx_path: Path, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    session, _ = onnx_session(onnx_path)
    report = compare(run_torch(model, images), run_session(session, images), labels)
    report["ok"] = report["max_abs_logit_diff"] < MAX_LOGIT_DIFF and report["flipped_not_near_tie"] == 0
    return report


def onnx_path(out: str | None, run: RunDir) -> Path:
    """--out is a folder, as in every command; a file name ending in .onnx still works (noted)."""
    if out is None:
        return run.onnx
    if out.endswith(".onnx"):
        print("note: --out now names a folder (model.onnx goes inside); a .onnx file name still works",
              file=sys.stderr)
        return Path(out)
    Path(out).mkdir(parents=True, exist_ok=True)
    return Path(out) / run.onnx.name


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgParser(prog="python -m cifar.export", description="Export a run's best.pt to ONNX and verify it.")
    parser.add_argument("run_dir", help="run directory holding best.pt")
    parser.add_argument("--out", default=None, help="the folder model.onnx goes to (default: RUN_DIR); "
                        "a path ending in .onnx, the older form, names the file")
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 location for the check (default: the run's)")
    parser.add_argument("--no-verify", action="store_true", help="skip the test-set comparison")
    add_tta_option(parser, 0, "test-time augmentation in the graph (level 2: 6 forward passes per image)")
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        return fail(e)
    run = RunDir(args.run_dir)
    try:
        if not run.path.is_dir():
            raise ValueError(f"no run directory {run}")
        model, classes, ckpt = classifier_from_checkpoint(run.best, args.tta)
        out = export_onnx(model, classes, onnx_path(args.out, run))
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, opset {OPSET}, input uint8 (N,3,32,32), "
              f"TTA {TTA_LEVELS[args.tta]})")
        if args.no_verify:
            return 0
        data_cfg = ckpt["config"]["data"]
        raw = load_cifar10(args.data_dir or data_cfg["data_dir"], data_cfg["cache_dir"], download=False)
        images, labels = raw.test.x.numpy(), raw.test.y.numpy()
        report = verify(model, out, images, labels)
        report["tta_level"] = args.tta
        if args.tta:  # the same weights without TTA, side by side
            plain, _, _ = classifier_from_checkpoint(run.best)
            report["acc_reference_no_tta"] = float((run_torch(plain, images).argmax(1) == labels).mean())
    except (ValueError, FileNotFoundError, DataError) as e:
        return fail(e)
    no_tta = f" (PyTorch without TTA {report['acc_reference_no_tta']:.4f})" if args.tta else ""
    print(f"test images {report['n']}: max |logit diff| {report['max_abs_logit_diff']:.2e} "
          f"(limit {MAX_LOGIT_DIFF:.0e}); test_acc PyTorch {report['acc_reference']:.4f}, "
          f"onnxruntime {report['acc_candidate']:.4f}{no_tta}; {report['flipped']} predictions flipped "
          f"({report['flipped_not_near_tie']} not on a near-tie)")
    run.onnx_check.write_text(json.dumps(report, indent=2) + "\n")
    if not report["ok"]:
        print("error: onnxruntime disagrees with PyTorch beyond the limits above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
