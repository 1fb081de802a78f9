"""CIFAR-10 sources: torchvision's official batches or an ImageFolder tree, decoded once and cached.

Two sources, chosen from what the directory holds: torchvision's official
``cifar-10-batches-py`` (downloaded when missing and online) and any
ImageFolder tree (``train/<class>/*``, ``test/<class>/*``). Images are decoded
once into uint8 tensors (N, 3, 32, 32) and cached on disk; later loads take
seconds. ``to_rgb32`` is the one place an image becomes a 32x32 RGB array
(the service decodes its uploads with it too).

Usage:
    raw = load_cifar10("../shared/data/cifar10-jpeg")   # RawCifar(train, test, classes)
"""

from __future__ import annotations

import hashlib
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CACHE_VERSION = 1
IMAGE_SIZE = 32
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
HOW_TO_GET = ("expected cifar-10-batches-py/ (torchvision's download) or train/<class>/ and "
              "test/<class>/ image folders; point CIFAR10_DIR at a copy (or the config's data_dir: "
              "--data_dir DIR for cifar.train, --set data_dir=DIR for study run), or run online "
              "with an empty ./data to download")


class DataError(ValueError):
    """The data directory is missing, malformed or unreadable."""


@dataclass
class Split:
    x: torch.Tensor  # uint8 (N, 3, 32, 32)
    y: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class RawCifar:
    """The data set as its source holds it: the official train and test sets."""
    train: Split
    test: Split
    classes: list[str]

    @classmethod
    def from_arrays(cls, d: dict) -> RawCifar:
        """From the cache's plain dict (the format of CACHE_VERSION 1 files)."""
        return cls(Split(d["train_x"], d["train_y"]), Split(d["test_x"], d["test_y"]), list(d["classes"]))


def to_rgb32(im: Image.Image) -> np.ndarray:
    """A PIL image as uint8 (32, 32, 3) RGB, resized bilinearly where it is another size."""
    rgb = im.convert("RGB")
    if rgb.size != (IMAGE_SIZE, IMAGE_SIZE):
        rgb = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def source_name(data_dir: str = "") -> str:
    """"torchvision" or "imagefolder:<dir>": what the directory holds, as provenance records it."""
    root = resolve_data_dir(data_dir)
    return "torchvision" if (root / "cifar-10-batches-py").is_dir() else f"imagefolder:{root}"


def resolve_data_dir(data_dir: str = "") -> Path:
    """--data-dir, else $CIFAR10_DIR, else ./data."""
    return Path(data_dir or os.environ.get("CIFAR10_DIR") or "data")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _folder_listing(root: Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """Classes of train/ and, per split, every (file, class index), checked for shape."""
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{root / 'train'} has no class folders; {HOW_TO_GET}")
    test_classes = sorted(p.name for p in (root / "test").iterdir() if p.is_dir())
    if test_classes != classes:
        raise DataError(f"class folders differ between {root / 'train'} ({len(classes)}) and "
                        f"{root / 'test'} ({len(test_classes)})")
    files: dict[str, list[tuple[Path, int]]] = {}
    for split in ("train", "test"):
        files[split] = [(f, i) for i, c in enumerate(classes) for f in _image_files(root / split / c)]
        if not files[split]:
            raise DataError(f"no images under {root / split}; {HOW_TO_GET}")
    return classes, files


def _decode(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return to_rgb32(im)
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e}") from None


def _decode_all(paths: list[Path]) -> torch.Tensor:
    # Pillow releases the GIL while decoding, so threads use every core.
    with ThreadPoolExecutor(min(os.cpu_count() or 1, 8)) as pool:
        arrays = list(pool.map(_decode, paths))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _fingerprint(paths: list[Path], extra: str) -> str:
    h = hashlib.sha1(f"{CACHE_VERSION}|{extra}".encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _cached(cache_dir: Path, key: str, build) -> dict:
    path = cache_dir / f"cifar10-{key}.pt"
    if path.exists():
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # a torn or foreign file: rebuild it
            pass
    arrays = build()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(arrays, tmp)
    os.replace(tmp, path)
    return arrays


def _load_imagefolder(root: Path, cache_dir: Path) -> dict:
    classes, files = _folder_listing(root)
    all_paths = [f for split in ("train", "test") for f, _ in files[split]]
    key = _fingerprint(all_paths, f"imagefolder|{root.resolve()}")

    def build() -> dict:
        out: dict = {"classes": classes}
        for split in ("train", "test"):
            out[f"{split}_x"] = _decode_all([f for f, _ in files[split]])
            out[f"{split}_y"] = torch.tensor([c for _, c in files[split]], dtype=torch.int64)
        return out

    return _cached(cache_dir, key, build)


def _load_torchvision(root: Path, cache_dir: Path, download: bool) -> dict:
    from torchvision.datasets import CIFAR10

    batches = root / "cifar-10-batches-py"
    if download and not batches.is_dir():
        try:
            CIFAR10(str(root), train=True, download=True)
        except Exception as e:
            raise DataError(f"no CIFAR-10 in {root} and the download failed "
                            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                            f"{HOW_TO_GET}") from None
    key = _fingerprint(sorted(batches.iterdir()), f"torchvision|{root.resolve()}")
    # torchvision checked the files' checksums when it downloaded them; reading
    # the pickled batches directly keeps any copy in the official layout usable.
    return _cached(cache_dir, key, lambda: _read_batches(batches))


def _read_batches(batches: Path) -> dict:
    def unpickle(name: str) -> dict:
        try:
            with (batches / name).open("rb") as f:
                return pickle.load(f, encoding="latin1")
        except (OSError, pickle.UnpicklingError, EOFError) as e:
            raise DataError(f"cannot read {batches / name}: {e}; {HOW_TO_GET}") from None

    out: dict = {"classes": list(unpickle("batches.meta")["label_names"])}
    for split, names in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
        parts = [unpickle(n) for n in names]
        data = np.concatenate([p["data"] for p in parts]).reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE)
        out[f"{split}_x"] = torch.from_numpy(data.astype(np.uint8))
        out[f"{split}_y"] = torch.tensor([y for p in parts for y in p["labels"]], dtype=torch.int64)
    return out


def load_cifar10(data_dir: str = "", cache_dir: str = "", download: bool = True) -> RawCifar:
    """Train and test sets of whichever source the directory holds, through the cache."""
    root = resolve_data_dir(data_dir)
    cache = Path(cache_dir) if cache_dir else (Path("data") / "cache")
    if (root / "cifar-10-batches-py").is_dir():
        return RawCifar.from_arrays(_load_torchvision(root, cache, download=False))
    if (root / "train").is_dir() or (root / "test").is_dir():
        if not ((root / "train").is_dir() and (root / "test").is_dir()):
            raise DataError(f"{root} has only one of train/ and test/; {HOW_TO_GET}")
        return RawCifar.from_arrays(_load_imagefolder(root, cache))
    if root.exists() and not root.is_dir():
        raise DataError(f"{root} is not a directory; {HOW_TO_GET}")
    if root.is_dir() and any(p for p in root.iterdir() if p.name != "cache"):
        raise DataError(f"{root} holds no CIFAR-10 data; {HOW_TO_GET}")
    if not download:
        raise DataError(f"no CIFAR-10 in {root}; {HOW_TO_GET}")
    return RawCifar.from_arrays(_load_torchvision(root, cache, download=True))
