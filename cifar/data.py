"""CIFAR-10 data: sources, on-disk cache, stratified split, batched augmentation, loaders.

Two sources, chosen from what the directory holds: torchvision's official
``cifar-10-batches-py`` (downloaded when missing and online) and any
ImageFolder tree (``train/<class>/*``, ``test/<class>/*``). Images are decoded
once into uint8 tensors (N, 3, 32, 32) and cached; batches are fetched whole,
moved to the device as uint8, then cropped, flipped, cut out and normalised
there in one batched step. The conventional per-image torchvision pipeline is
kept for comparison (``pipeline="torchvision"``).

Usage:
    data = prepare_data(DataConfig(data_dir="../shared/data/cifar10-jpeg"))
    batches = Pipeline(data.train, cfg, data.mean, data.std, device, train=True, seed=0)
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from cifar.config import DataConfig, TrainConfig

CACHE_VERSION = 1
IMAGE_SIZE = 32
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
HOW_TO_GET = ("expected cifar-10-batches-py/ (torchvision's download) or train/<class>/ and "
              "test/<class>/ image folders; set --data-dir or CIFAR10_DIR to a copy, or run "
              "online with an empty ./data to download")


class DataError(ValueError):
    """The data directory is missing, malformed or unreadable."""


@dataclass
class Split:
    x: torch.Tensor  # uint8 (N, 3, 32, 32)
    y: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class CifarData:
    train: Split
    val: Split
    test: Split
    classes: list[str]
    mean: tuple[float, float, float]  # per-channel mean of the train split, in [0, 1]
    std: tuple[float, float, float]
    source: str                        # "torchvision" or "imagefolder:<dir>"


# ---------------------------------------------------------------- sources


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
            im = im.convert("RGB")
            if im.size != (IMAGE_SIZE, IMAGE_SIZE):
                im = im.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
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


def load_cifar10(data_dir: str = "", cache_dir: str = "", download: bool = True) -> dict:
    """Train and test tensors of whichever source the directory holds, through the cache."""
    root = resolve_data_dir(data_dir)
    cache = Path(cache_dir) if cache_dir else (Path("data") / "cache")
    if (root / "cifar-10-batches-py").is_dir():
        return _load_torchvision(root, cache, download=False)
    if (root / "train").is_dir() or (root / "test").is_dir():
        if not ((root / "train").is_dir() and (root / "test").is_dir()):
            raise DataError(f"{root} has only one of train/ and test/; {HOW_TO_GET}")
        return _load_imagefolder(root, cache)
    if root.exists() and not root.is_dir():
        raise DataError(f"{root} is not a directory; {HOW_TO_GET}")
    if root.is_dir() and any(p for p in root.iterdir() if p.name != "cache"):
        raise DataError(f"{root} holds no CIFAR-10 data; {HOW_TO_GET}")
    if not download:
        raise DataError(f"no CIFAR-10 in {root}; {HOW_TO_GET}")
    return _load_torchvision(root, cache, download=True)


# ---------------------------------------------------------------- split and statistics


def stratified_split(labels: torch.Tensor, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of indices into (train, val) keeping class proportions in val."""
    n = len(labels)
    if not 0 <= val_size < n:
        raise ValueError(f"val_size must be in [0, {n}), got {val_size}")
    g = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(labels, return_counts=True)
    # Largest-remainder rounding makes the per-class shares sum to val_size exactly.
    exact = counts.double() * val_size / n
    take = exact.floor().long()
    remainder = val_size - int(take.sum())
    take[torch.argsort(exact - take, descending=True, stable=True)[:remainder]] += 1
    val_parts = []
    for c, k in zip(classes.tolist(), take.tolist()):
        idx = torch.nonzero(labels == c).flatten()
        val_parts.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    val = torch.cat(val_parts).sort().values
    mask = torch.ones(n, dtype=torch.bool)
    mask[val] = False
    return torch.nonzero(mask).flatten(), val


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (unbiased) in [0, 1] units of a uint8 (N, 3, H, W) tensor."""
    # In chunks: a float64 copy of the whole train split would take over 1 GB.
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for chunk in x.split(2048):
        c = chunk.double()
        total += c.sum((0, 2, 3))
        squares += c.square().sum((0, 2, 3))
    n = x.numel() // x.shape[1]
    mean = total / n
    var = (squares - n * mean.square()) / (n - 1)
    return tuple((mean / 255).tolist()), tuple((var.sqrt() / 255).tolist())


def prepare_data(cfg: DataConfig, seed: int = 0, download: bool = True) -> CifarData:
    """Load, split (seeded, stratified), subsample the train split, and measure its statistics."""
    raw = load_cifar10(cfg.data_dir, cfg.cache_dir, download)
    train_idx, val_idx = stratified_split(raw["train_y"], cfg.val_size, cfg.split_seed)
    if cfg.train_fraction < 1.0:
        keep = max(1, round(len(train_idx) * cfg.train_fraction))
        sub, _ = stratified_split(raw["train_y"][train_idx], len(train_idx) - keep, cfg.split_seed + 1)
        train_idx = train_idx[sub]
    train = Split(raw["train_x"][train_idx], raw["train_y"][train_idx])
    mean, std = channel_stats(train.x)
    root = resolve_data_dir(cfg.data_dir)
    source = "torchvision" if (root / "cifar-10-batches-py").is_dir() else f"imagefolder:{root}"
    return CifarData(
        train=train,
        val=Split(raw["train_x"][val_idx], raw["train_y"][val_idx]),
        test=Split(raw["test_x"], raw["test_y"]),
        classes=list(raw["classes"]),
        mean=mean, std=std, source=source,
    )


# ---------------------------------------------------------------- batched augmentation


def _reflect(i: torch.Tensor, size: int) -> torch.Tensor:
    """Reflect-padding index map: -1 -> 1, size -> size - 2 (no edge repeat)."""
    i = i.abs()
    return torch.where(i >= size, 2 * (size - 1) - i, i)


def augment_batch(x: torch.Tensor, padding: int, flip: bool, cutout: int,
                  generator: torch.Generator) -> torch.Tensor:
    """Random crop with reflect padding, horizontal flip and cutout of a uint8 batch.

    Crop and flip are one gather: each output pixel's source row and column are
    computed per image, so there is no padded copy and no per-image Python loop.
    Random draws come from ``generator`` (CPU), so results are the same on any device.
    Returns uint8 (N, 3, H, W) in channels-last memory layout.
    """
    n, _, h, w = x.shape
    dy = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    flips = torch.rand(n, 1, generator=generator) < 0.5 if flip else torch.zeros(n, 1, dtype=torch.bool)
    rows = _reflect(torch.arange(h) + dy - padding, h)
    cols = torch.arange(w).expand(n, w)
    cols = torch.where(flips, w - 1 - cols, cols)
    cols = _reflect(cols + dx - padding, w)
    rows, cols = rows.to(x.device), cols.to(x.device)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indices around a slice put their dims first: (N, H, W, C).
    out = x[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if cutout:
        cy = torch.randint(0, h, (n, 1, 1), generator=generator).to(x.device)
        cx = torch.randint(0, w, (n, 1, 1), generator=generator).to(x.device)
        r = torch.arange(h, device=x.device)[None, :, None]
        c = torch.arange(w, device=x.device)[None, None, :]
        hole = ((r - cy).abs() * 2 < cutout) & ((c - cx).abs() * 2 < cutout)
        out = out.masked_fill(hole[:, None], 0)
    return out


class Normalize:
    """uint8 images to normalised float, on whatever device the batch is on."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], channels_last: bool):
        self.mean = torch.tensor(mean).view(1, -1, 1, 1) * 255
        self.inv_std = 1 / (torch.tensor(std).view(1, -1, 1, 1) * 255)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean.device != x.device:
            self.mean, self.inv_std = self.mean.to(x.device), self.inv_std.to(x.device)
        x = x.contiguous(memory_format=self.memory_format)
        return (x.float() - self.mean) * self.inv_std


# ---------------------------------------------------------------- loaders


class _BatchDataset(Dataset):
    """Indexed by a list of indices: the DataLoader fetches a whole batch in one call."""

    def __init__(self, split: Split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx_t = torch.as_tensor(idx)
        return self.split.x[idx_t], self.split.y[idx_t]


class ShardSampler(Sampler[int]):
    """Indices of one rank's shard of a split: ``rank, rank + world, ...`` of one order.

    Shuffled, every rank draws the same permutation from its own copy of ``generator``
    (same seed), keeps the same number of indices (the remainder is dropped for the
    epoch) and so runs the same number of steps. In order (evaluation), the shards
    partition the split exactly and may differ in size by one.
    """

    def __init__(self, n: int, rank: int, world: int, generator: torch.Generator | None):
        self.n, self.rank, self.world, self.generator = n, rank, world, generator

    def __len__(self) -> int:
        if self.generator is not None:
            return self.n // self.world
        return len(range(self.rank, self.n, self.world))

    def __iter__(self) -> Iterator[int]:
        if self.generator is None:
            return iter(range(self.rank, self.n, self.world))
        order = torch.randperm(self.n, generator=self.generator)
        return iter(order[: self.n - self.n % self.world][self.rank::self.world].tolist())


class _PILDataset(Dataset):
    """The conventional pipeline: one PIL image and one transform call per item."""

    def __init__(self, split: Split, transform):
        self.images = split.x.permute(0, 2, 3, 1).numpy()
        self.labels = split.y.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


class Pipeline:
    """Yields (normalised float images, labels) on ``device``; its RNG state is checkpointable."""

    def __init__(self, split: Split, cfg: TrainConfig, mean, std, device: torch.device,
                 train: bool, seed: int = 0, rank: int = 0, world: int = 1):
        self.cfg, self.device, self.train = cfg, device, train
        self.shuffle_gen = torch.Generator().manual_seed(seed)
        self.augment_gen = torch.Generator().manual_seed(seed + 1 + 1000 * rank)
        self.normalize = Normalize(mean, std, cfg.channels_last)
        # In a distributed job cfg.batch_size is the global batch: each rank takes its share.
        batch_size = cfg.batch_size // world if train else cfg.eval_batch_size
        drop_last = train and len(split) // world > batch_size  # no 1-image batch for BatchNorm
        if world > 1:
            sampler = ShardSampler(len(split), rank, world, self.shuffle_gen if train else None)
        else:
            sampler = RandomSampler(split, generator=self.shuffle_gen) if train else SequentialSampler(split)
        pin = device.type == "cuda"
        if cfg.data.pipeline == "torchvision" and train:
            self.loader = DataLoader(
                _PILDataset(split, _torchvision_transform(cfg.data, mean, std)),
                batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                num_workers=cfg.data.num_workers, generator=self.shuffle_gen,
                persistent_workers=cfg.data.num_workers > 0, pin_memory=pin)
            self.per_image = True
        else:
            self.loader = DataLoader(
                _BatchDataset(split), batch_size=None, pin_memory=pin,
                sampler=BatchSampler(sampler, batch_size, drop_last=drop_last))
            self.per_image = False

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        d = self.cfg.data
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            if self.per_image:  # already augmented and normalised by the workers
                fmt = torch.channels_last if self.cfg.channels_last else torch.contiguous_format
                yield x.contiguous(memory_format=fmt), y
                continue
            if self.train:
                x = augment_batch(x, d.crop_padding, d.flip, d.cutout, self.augment_gen)
            yield self.normalize(x), y

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"shuffle": self.shuffle_gen.get_state(), "augment": self.augment_gen.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.shuffle_gen.set_state(state["shuffle"])
        self.augment_gen.set_state(state["augment"])


def _torchvision_transform(cfg: DataConfig, mean, std):
    from torchvision import transforms as T

    steps = []
    if cfg.crop_padding:
        steps.append(T.RandomCrop(IMAGE_SIZE, padding=cfg.crop_padding, padding_mode="reflect"))
    if cfg.flip:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    if cfg.cutout:
        area = cfg.cutout**2 / IMAGE_SIZE**2
        steps.append(T.RandomErasing(p=1.0, scale=(area, area), ratio=(1.0, 1.0), value=0))
    return T.Compose(steps)
