"""Batches for training and evaluation: batched on-device augmentation and normalisation.

Batches are fetched whole (no per-image Python work), moved to the device as
uint8, then cropped (reflect padding), flipped, cut out and normalised there in
one batched step. The conventional per-image torchvision pipeline is kept for
comparison (``pipeline="torchvision"``). Under torchrun each rank takes its
shard of one seeded order (``ShardSampler``). ``Normalize`` is the one
implementation of the input normalisation; the ONNX export puts it in its graph.

Usage:
    batches = Pipeline(data.train, cfg, data.mean, data.std, device, train=True, seed=cfg.seed)
    for x, y in batches: ...
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from cifar import config
from cifar.registry import Registry
from cifar.runtime import memory_format
from cifar.sources import IMAGE_SIZE, Split

if TYPE_CHECKING:
    from cifar.config import DataConfig, TrainConfig

def _reflect(i: torch.Tensor, size: int) -> torch.Tensor:
    """Reflect-padding index map: -1 -> 1, size -> size - 2 (no edge repeat)."""
    i = i.abs()
    return torch.where(i >= size, 2 * (size - 1) - i, i)


def augment_batch(x: torch.Tensor, padding: int, flip: bool, cutout: int,
                  generator: torch.Generator, flips: torch.Tensor | None = None) -> torch.Tensor:
    """Random crop with reflect padding, horizontal flip and cutout of a uint8 batch.

    Crop and flip are one gather: each output pixel's source row and column are
    computed per image, so there is no padded copy and no per-image Python loop.
    Random draws come from ``generator`` (CPU), so results are the same on any device.
    Returns uint8 (N, 3, H, W) in channels-last memory layout.
    """
    n, _, h, w = x.shape
    dy = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    if flips is None:  # given: the alternating flip's choice for each image (bool (N,))
        flips = torch.rand(n, 1, generator=generator) < 0.5 if flip else torch.zeros(n, 1, dtype=torch.bool)
    flips = flips.view(n, 1).cpu()
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


class Normalize(nn.Module):
    """uint8 images (N, 3, H, W) to float, normalised with the train split's per-channel statistics."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.register_buffer("inv_std", 1 / (torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) * self.inv_std


# ---------------------------------------------------------------- loaders


class _BatchDataset(Dataset):
    """Indexed by a list of indices: the DataLoader fetches a whole batch in one call."""

    def __init__(self, split: Split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx_t = torch.as_tensor(idx)
        return self.split.x[idx_t], self.split.y[idx_t], idx_t


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


def _tensor_loader(split: Split, cfg: TrainConfig, mean, std, sampler: Sampler, batch_size: int,
                   drop_last: bool, generator: torch.Generator, pin: bool) -> DataLoader:
    """Whole batches by index: one tensor gather per batch; augmentation follows on the device."""
    return DataLoader(_BatchDataset(split), batch_size=None, pin_memory=pin,
                      sampler=BatchSampler(sampler, batch_size, drop_last=drop_last))


def _torchvision_loader(split: Split, cfg: TrainConfig, mean, std, sampler: Sampler, batch_size: int,
                        drop_last: bool, generator: torch.Generator, pin: bool) -> DataLoader:
    """The conventional pipeline: PIL images augmented and normalised one by one in workers."""
    d = cfg.data
    return DataLoader(_PILDataset(split, _torchvision_transform(d, mean, std)),
                      batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      num_workers=d.num_workers, generator=generator,
                      persistent_workers=d.num_workers > 0, pin_memory=pin)


# name -> training loader; evaluation always fetches whole tensor batches.
PIPELINES = Registry("pipeline", {"tensor": _tensor_loader, "torchvision": _torchvision_loader}).declared(
    config.PIPELINES)


class Pipeline:
    """Yields (normalised float images, labels) on ``device``; its RNG state is checkpointable."""

    def __init__(self, split: Split, cfg: TrainConfig, mean, std, device: torch.device,
                 train: bool, seed: int = 0, rank: int = 0, world: int = 1):
        self.cfg, self.device, self.train = cfg, device, train
        self.shuffle_gen = torch.Generator().manual_seed(seed)
        self.augment_gen = torch.Generator().manual_seed(seed + 1 + 1000 * rank)
        self.epoch = 0  # passes started, for the alternating flip
        self.flip_first = torch.rand(len(split), generator=torch.Generator().manual_seed(seed + 2)) < 0.5
        self.normalize = Normalize(mean, std).to(device)
        self.memory_format = memory_format(cfg)
        # In a distributed job cfg.batch_size is the global batch: each rank takes its share.
        batch_size = cfg.batch_size // world if train else cfg.eval_batch_size
        drop_last = train and len(split) // world > batch_size  # no 1-image batch for BatchNorm
        if world > 1:
            sampler = ShardSampler(len(split), rank, world, self.shuffle_gen if train else None)
        else:
            sampler = RandomSampler(split, generator=self.shuffle_gen) if train else SequentialSampler(split)
        name = cfg.data.pipeline if train else "tensor"
        self.per_image = name != "tensor"  # augmented and normalised by the loader's workers
        self.loader = PIPELINES.get(name)(split, cfg, mean, std, sampler, batch_size, drop_last,
                                          self.shuffle_gen, device.type == "cuda")

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        d = self.cfg.data
        alternate = self.train and d.flip and d.alternating_flip
        epoch, self.epoch = self.epoch, self.epoch + 1
        for x, y, *idx in self.loader:
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            if self.per_image:
                yield x.contiguous(memory_format=self.memory_format), y
                continue
            if self.train:
                # Alternating flip: a seeded half of the images starts flipped, and every image
                # flips on alternate epochs (less flip noise than a fresh coin per epoch).
                flips = self.flip_first[idx[0]] ^ bool(epoch % 2) if alternate else None
                x = augment_batch(x, d.crop_padding, d.flip, d.cutout, self.augment_gen, flips)
            yield self.normalize(x.contiguous(memory_format=self.memory_format)), y

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        return {"shuffle": self.shuffle_gen.get_state(), "augment": self.augment_gen.get_state(),
                "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.shuffle_gen.set_state(state["shuffle"])
        self.augment_gen.set_state(state["augment"])
        self.epoch = state.get("epoch", 0)


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
