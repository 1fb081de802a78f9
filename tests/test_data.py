"""Data: sources and cache, stratified split, augmentation, loaders."""

from __future__ import annotations

import time

import pytest
import torch

from cifar.config import DataConfig
from cifar.data import (
    DataError,
    channel_stats,
    prepare_data,
    stratified_split,
)
from cifar.pipeline import Normalize, Pipeline, augment_batch
from cifar.sources import load_cifar10
from tests.conftest import CLASSES, make_image_folder, synthetic_images, tiny_config


@pytest.mark.parametrize("n, classes, val_size", [
    (1000, 10, 100),   # CIFAR-like, divides evenly
    (999, 3, 250),     # uneven: largest-remainder rounding must still sum exactly
    (60, 3, 0),        # no validation set
])
def test_split_sizes_and_stratification(n, classes, val_size):
    labels = torch.arange(n) % classes
    train, val = stratified_split(labels, val_size, seed=0)
    assert len(val) == val_size and len(train) == n - val_size
    assert len(set(train.tolist()) | set(val.tolist())) == n  # disjoint and complete
    if val_size:
        per_class = torch.bincount(labels[val], minlength=classes)
        assert per_class.max() - per_class.min() <= 1


def test_split_is_seeded():
    labels = torch.arange(500) % 10
    assert torch.equal(stratified_split(labels, 50, 7)[1], stratified_split(labels, 50, 7)[1])
    assert not torch.equal(stratified_split(labels, 50, 7)[1], stratified_split(labels, 50, 8)[1])


def test_image_folder_source_and_cache(tmp_path):
    root = make_image_folder(tmp_path / "imgs", suffix=".jpg")
    cache = tmp_path / "cache"
    first = load_cifar10(str(root), str(cache))
    assert first.classes == CLASSES
    assert first.train.x.shape == (30, 3, 32, 32) and first.train.x.dtype == torch.uint8
    assert first.test.y.tolist() == sorted(first.test.y.tolist())
    assert len(list(cache.glob("*.pt"))) == 1
    start = time.perf_counter()
    again = load_cifar10(str(root), str(cache))
    assert time.perf_counter() - start < 2.0
    assert torch.equal(again.train.x, first.train.x)
    # A changed source is re-read, not served stale from the cache.
    (root / "train" / "ant" / "0000.jpg").unlink()
    assert load_cifar10(str(root), str(cache)).train.x.shape[0] == 29


def test_png_pixels_survive_exactly(tmp_path):
    root = make_image_folder(tmp_path / "imgs", suffix=".png")
    loaded = load_cifar10(str(root), str(tmp_path / "cache"))
    x, _ = synthetic_images(30, 0)
    by_class = torch.cat([x[torch.arange(30) % 3 == c] for c in range(3)])
    assert torch.equal(loaded.train.x, by_class)


@pytest.mark.parametrize("layout, message", [
    ("missing_test", "only one of train/ and test/"),     # half a data set
    ("no_classes", "has no class folders"),               # train/ without class folders
    ("stray_files", "holds no CIFAR-10 data"),            # some unrelated directory
    ("class_mismatch", "class folders differ"),           # test/ has other classes
])
def test_bad_folder_gives_one_line_error(tmp_path, layout, message):
    root = tmp_path / "bad"
    if layout == "missing_test":
        make_image_folder(root)
        for p in sorted((root / "test").rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        (root / "test").rmdir()
    elif layout == "no_classes":
        (root / "train").mkdir(parents=True)
        (root / "test").mkdir()
    elif layout == "stray_files":
        root.mkdir()
        (root / "notes.txt").write_text("hello")
    elif layout == "class_mismatch":
        make_image_folder(root)
        (root / "test" / "ant").rename(root / "test" / "eel")
    with pytest.raises(DataError) as info:
        load_cifar10(str(root), str(tmp_path / "cache"), download=False)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_corrupt_image_is_named(tmp_path):
    root = make_image_folder(tmp_path / "imgs")
    (root / "train" / "bee" / "0001.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="0001.png"):
        load_cifar10(str(root), str(tmp_path / "cache"))


def test_prepare_data_statistics_come_from_train_split(image_folder, tmp_path):
    data = prepare_data(DataConfig(data_dir=str(image_folder), cache_dir=str(tmp_path / "c"), val_size=6))
    assert (len(data.train), len(data.val), len(data.test)) == (24, 6, 9)
    expected = data.train.x.double().div(255).mean(dim=(0, 2, 3))
    assert torch.allclose(torch.tensor(data.mean, dtype=torch.float64), expected)


def test_augmentation_shapes_changes_and_reflection():
    x, _ = synthetic_images(64, 0)
    g = torch.Generator().manual_seed(0)
    out = augment_batch(x, padding=4, flip=True, cutout=8, generator=g)
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert (out != x).any(dim=(1, 2, 3)).float().mean() > 0.9  # nearly every image changed
    # No padding, no flip, no cutout: the identity.
    assert torch.equal(augment_batch(x, 0, False, 0, g), x)
    # Padding only: a shift with reflection, so every output pixel value comes from the image.
    shifted = augment_batch(x[:1], 4, False, 0, torch.Generator().manual_seed(3))
    assert set(shifted.flatten().tolist()) <= set(x[0].flatten().tolist())


def test_flip_only_mirrors_each_image_or_leaves_it():
    x, _ = synthetic_images(32, 0)
    out = augment_batch(x, 0, True, 0, torch.Generator().manual_seed(0))
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(3)).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()


def test_normalize_uses_given_statistics():
    x = torch.full((2, 3, 4, 4), 51, dtype=torch.uint8)  # 0.2 in [0, 1] units
    out = Normalize((0.2, 0.1, 0.0), (0.5, 0.5, 0.5))(x)
    assert torch.allclose(out[:, 0], torch.zeros(1)) and torch.allclose(out[:, 2], torch.tensor(0.4))


@pytest.mark.parametrize("pipeline", ["tensor", "torchvision"])
def test_pipelines_yield_normalised_batches(tiny_data, pipeline):
    cfg = tiny_config(data=DataConfig(pipeline=pipeline, num_workers=0))
    batches = Pipeline(tiny_data.train, cfg, tiny_data.mean, tiny_data.std, torch.device("cpu"), train=True)
    xs, ys = zip(*batches)
    assert len(xs) == len(batches) == 96 // 16
    x = torch.cat(xs)
    assert x.shape == (96, 3, 32, 32) and x.dtype == torch.float32
    assert abs(x.mean().item()) < 0.3 and 0.6 < x.std().item() < 1.4
    assert sorted(torch.cat(ys).tolist()) == sorted(tiny_data.train.y.tolist())


def test_tensor_pipeline_is_seeded_and_resumable(tiny_data):
    cfg = tiny_config()
    dev = torch.device("cpu")
    a = Pipeline(tiny_data.train, cfg, tiny_data.mean, tiny_data.std, dev, train=True, seed=5)
    list(a)
    state = a.state_dict()
    second = torch.cat([x for x, _ in a])
    b = Pipeline(tiny_data.train, cfg, tiny_data.mean, tiny_data.std, dev, train=True, seed=5)
    b.load_state_dict(state)
    assert torch.equal(torch.cat([x for x, _ in b]), second)


def test_channel_stats_match_direct_computation():
    x, _ = synthetic_images(50, 3)
    mean, std = channel_stats(x)
    flat = x.transpose(0, 1).reshape(3, -1).double() / 255
    assert torch.allclose(torch.tensor(mean, dtype=torch.float64), flat.mean(1))
    assert torch.allclose(torch.tensor(std, dtype=torch.float64), flat.std(1))


def test_official_batches_source(tmp_path):
    """A cifar-10-batches-py folder in the official pickled layout (tiny, made here) is read."""
    import pickle

    import numpy as np

    batches = tmp_path / "official" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    written = {}
    for i, name in enumerate(names):
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        written[name] = data
        with (batches / name).open("wb") as f:
            pickle.dump({"data": data, "labels": [i % 10, 1, 2, 3]}, f)
    with (batches / "batches.meta").open("wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    d = load_cifar10(str(tmp_path / "official"), str(tmp_path / "cache"), download=False)
    assert d.classes[0] == "c0" and d.train.x.shape == (20, 3, 32, 32)
    assert d.train.y[:4].tolist() == [0, 1, 2, 3] and len(d.test.y) == 4
    assert torch.equal(d.test.x[0], torch.from_numpy(written["test_batch"][0].reshape(3, 32, 32)))
