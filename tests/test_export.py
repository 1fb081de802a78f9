"""ONNX export: graph validity, dynamic batch, embedded normalisation, agreement with PyTorch, CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from cifar.export import classifier_from_checkpoint, compare, export_onnx, main, onnx_session, run_session, verify
from cifar.serve import Predictor
from tests.conftest import CLASSES, synthetic_images


@pytest.fixture(scope="module")
def exported(tiny_run):
    model, classes, _ = classifier_from_checkpoint(tiny_run / "best.pt")
    path = export_onnx(model, classes, tiny_run / "model.onnx")
    return model, path


def test_export_is_valid_onnx_with_classes_and_dynamic_batch(exported):
    _, path = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    (inp,) = proto.graph.input
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert inp.type.tensor_type.shape.dim[0].dim_param  # symbolic batch dimension
    session, classes = onnx_session(path)
    assert classes == CLASSES
    for n in (1, 7):
        x, _ = synthetic_images(n, 5)
        assert run_session(session, x.numpy()).shape == (n, len(CLASSES))


def test_onnx_matches_pytorch_on_raw_uint8_images(exported):
    model, path = exported
    x, y = synthetic_images(48, 3)
    report = verify(model, path, x.numpy(), y.numpy())
    assert report["ok"], report
    assert report["max_abs_logit_diff"] < 1e-4
    assert report["acc_reference"] == report["acc_candidate"]


def test_compare_counts_flips_and_near_ties():
    ref = np.array([[2.0, 1.0], [1.0, 1.0005], [0.0, 3.0]])
    cand = np.array([[2.0, 1.0], [1.0006, 1.0], [3.5, 3.0]])
    r = compare(ref, cand, np.array([0, 1, 1]))
    assert r["flipped"] == 2 and r["flipped_not_near_tie"] == 1
    assert r["max_abs_logit_diff"] == pytest.approx(3.5)
    assert r["acc_reference"] == pytest.approx(1.0) and r["acc_candidate"] == pytest.approx(1 / 3)


def test_checkpoint_and_onnx_predictors_agree(exported, tiny_run):
    _, path = exported
    x, _ = synthetic_images(10, 4)
    p_onnx = Predictor(path).probabilities(x.numpy())
    p_torch = Predictor(tiny_run / "best.pt").probabilities(x.numpy())
    np.testing.assert_allclose(p_onnx, p_torch, atol=1e-5)
    np.testing.assert_allclose(p_onnx.sum(1), 1.0, atol=1e-9)


def test_cli_exports_and_rejects_bad_input(tiny_run, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main([str(tiny_run), "--out", str(out), "--no-verify"]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out
    assert main([str(tmp_path / "missing")]) == 2
    assert "no run directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_cli_verifies_on_the_runs_test_set(tiny_run, image_folder, capsys, monkeypatch):
    monkeypatch.chdir(image_folder.parent)  # the data cache lands here, not in the checkout
    assert main([str(tiny_run), "--data-dir", str(image_folder)]) == 0
    report = json.loads((tiny_run / "onnx_check.json").read_text())
    assert report["ok"] and report["n"] == 9
    assert "max |logit diff|" in capsys.readouterr().out


@pytest.mark.parametrize("level", [1, 2])  # mirror; mirror + translate
def test_onnx_with_tta_in_the_graph_matches_pytorch_tta(tiny_run, tmp_path, level):
    import torch

    from cifar.tta import tta_logits

    model, classes, _ = classifier_from_checkpoint(tiny_run / "best.pt", tta=level)
    path = export_onnx(model, classes, tmp_path / f"tta{level}.onnx")
    x, y = synthetic_images(20, 6)
    report = verify(model, path, x.numpy(), y.numpy())
    assert report["ok"], report
    # The graph holds TTA: its logits are the plain model's, averaged over the augmented copies.
    plain, _, _ = classifier_from_checkpoint(tiny_run / "best.pt")
    session, _ = onnx_session(path)
    with torch.no_grad():
        expected = tta_logits(plain.net, plain.normalize(x), level).numpy()
        without = plain(x).numpy()
    np.testing.assert_allclose(run_session(session, x.numpy()), expected, atol=1e-4)
    assert not np.allclose(expected, without, atol=1e-4)


def test_out_names_a_folder_as_everywhere(tiny_run, tmp_path, capsys):
    assert main([str(tiny_run), "--out", str(tmp_path / "exported"), "--no-verify"]) == 0
    assert (tmp_path / "exported" / "model.onnx").is_file()
