"""SmallCNN: a compact CIFAR-10 network with plain or residual blocks.

Layout: an optional full-resolution stem conv, then one stage per entry of
``ModelConfig.widths``. The first block of a stage changes the width and halves
the resolution (max-pool right after its first convolution, so BatchNorm and
ReLU run on a quarter of the pixels); the other ``depth - 1`` blocks keep both.
Each stage ends with Dropout; global max pooling and a linear layer make the head,
whose output is scaled by 1/8 (as ResNet-9 of DAWNBench and airbench do) so the
first steps at a high learning rate don't saturate the softmax.

- plain block: conv3x3-BN-ReLU (one convolution)
- residual block: conv3x3-BN-ReLU-conv3x3-BN plus a shortcut, then ReLU; the
  shortcut is the identity, or avg-pool + 1x1 conv + BN where the block pools
  or changes width (a simplified ResNet basic block).

Usage:
    model = SmallCNN(ModelConfig(widths=(64, 128, 256), block="residual"))
    print(count_parameters(model), forward_flops(model))
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.weak import WeakIdKeyDictionary

from cifar import config
from cifar.pool import MaxPool2x2
from cifar.recompute import norm_act_conv
from cifar.registry import Registry
from cifar.runtime import memory_format

if TYPE_CHECKING:
    from collections.abc import Callable

    from cifar.config import ModelConfig, TrainConfig


ACTIVATIONS: Registry[type[nn.Module]] = Registry("activation", {"relu": nn.ReLU, "gelu": nn.GELU}).declared(
    config.ACTIVATIONS)
WHITEN_KERNEL = 2
WHITEN_WIDTH = 2 * 3 * WHITEN_KERNEL**2  # every eigenvector of a 2x2x3 patch, and its negative


@dataclass(frozen=True)
class LayerKit:
    """How a block builds its convolutions, norms and activations (from ModelConfig)."""
    activation: str = "relu"
    bn_scale: bool = True
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    dirac_init: bool = False

    def conv(self, c_in: int, c_out: int, k: int = 3) -> nn.Conv2d:
        # No bias: every convolution is followed by BatchNorm, which has its own shift.
        conv = nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False)
        if self.dirac_init and k > 1:
            # Identity on the first channels: the block starts as (part of) a shortcut.
            nn.init.dirac_(conv.weight.data[:c_in])
        return conv

    def norm(self, c: int) -> nn.BatchNorm2d:
        bn = nn.BatchNorm2d(c, eps=self.bn_eps, momentum=self.bn_momentum)
        bn.weight.requires_grad_(self.bn_scale)  # without a scale: stays 1, only the shift learns
        return bn

    def act(self) -> nn.Module:
        cls = ACTIVATIONS.get(self.activation)
        return cls(inplace=True) if cls is nn.ReLU else cls()


class PlainBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, pool: bool, kit: LayerKit = LayerKit()):
        super().__init__()
        self.conv = kit.conv(c_in, c_out)
        self.pool = MaxPool2x2() if pool else nn.Identity()
        self.bn = kit.norm(c_out)
        self.act = kit.act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.pool(self.conv(x))))


class ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, pool: bool, kit: LayerKit = LayerKit()):
        super().__init__()
        self.conv1 = kit.conv(c_in, c_out)
        self.pool = MaxPool2x2() if pool else nn.Identity()
        self.bn1 = kit.norm(c_out)
        self.conv2 = kit.conv(c_out, c_out)
        self.bn2 = kit.norm(c_out)
        self.act = kit.act()
        if pool or c_in != c_out:
            # Average pooling commutes with the 1x1 conv, so pool first: 4x fewer FLOPs.
            self.shortcut = nn.Sequential(nn.AvgPool2d(2) if pool else nn.Identity(),
                                          kit.conv(c_in, c_out, k=1), kit.norm(c_out))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.pool(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class PatchWhitening(nn.Conv2d):
    """A 2x2 convolution (3 -> 24 channels) that whitens 2x2 patches; weights frozen, bias trainable.

    ``fit`` sets the filters to the eigenvectors of the covariance of the train split's
    patches, each scaled by 1/sqrt(eigenvalue + eps), stacked with their negatives
    (so a following activation keeps both signs).
    """

    def __init__(self, eps: float = 5e-4):
        super().__init__(3, WHITEN_WIDTH, WHITEN_KERNEL, padding=0, bias=True)
        self.eps = eps
        self.weight.requires_grad_(False)

    @torch.no_grad()
    def fit(self, images: torch.Tensor, chunk: int = 500) -> None:
        """``images``: normalised float (N, 3, H, W) train images (read ``chunk`` at a time: little memory)."""
        k, d = WHITEN_KERNEL, 3 * WHITEN_KERNEL**2
        sums = {"dtype": torch.float64, "device": images.device}  # on the images' device (a GPU's too)
        n, total, outer = 0, torch.zeros(d, **sums), torch.zeros(d, d, **sums)
        for part in images.split(chunk):
            patches = part.float().unfold(2, k, 1).unfold(3, k, 1)                   # N, 3, H', W', k, k
            flat = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, d).double()  # one row per patch
            n, total, outer = n + len(flat), total + flat.sum(0), outer + flat.T @ flat
        mean = total / n
        covariance = (outer - n * torch.outer(mean, mean)) / (n - 1)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = (eigenvectors.T / (eigenvalues[:, None] + self.eps).sqrt()).reshape(-1, 3, k, k)
        self.weight.copy_(torch.cat([filters, -filters]).to(self.weight))
        self.bias.zero_()

    @torch.no_grad()
    def fit_once(self, source: torch.Tensor, key: tuple, images: Callable[[], torch.Tensor]) -> None:
        """``fit(images())`` the first time this process sees ``source`` (the train images) with ``key``;
        after that, set the same fit. Runs of one process on the same data (a study's trials, a report's
        runs) fit once: 1.0 s a run on 5000 images on a 2-core AMD EPYC, 0.6% of the reference job's
        median trial (171 s), so kept (measured 2026-12-07)."""
        fits, key = _WHITENING_FITS.setdefault(source, {}), (*key, self.eps)
        if key not in fits:
            self.fit(images())
            fits[key] = self.weight.clone()
        else:
            self.weight.copy_(fits[key])
            self.bias.zero_()


_WHITENING_FITS: WeakIdKeyDictionary = WeakIdKeyDictionary()  # train images -> {key: fitted filters}


BLOCKS: Registry[type[nn.Module]] = Registry("block", {"plain": PlainBlock, "residual": ResidualBlock}).declared(
    config.BLOCKS)


class SmallCNN(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        kit = LayerKit(cfg.activation, cfg.bn_scale, cfg.bn_eps, cfg.bn_momentum, cfg.dirac_init)
        layers: list[nn.Module] = []
        c = 3
        if cfg.stem == "whiten":
            layers += [PatchWhitening(), kit.act()]
            c = WHITEN_WIDTH
        elif cfg.stem_width:
            layers += [kit.conv(3, cfg.stem_width), kit.norm(cfg.stem_width), kit.act()]
            c = cfg.stem_width
        block = BLOCKS.get(cfg.block)
        for width in cfg.widths:
            for i in range(cfg.depth):
                layers.append(block(c if i == 0 else width, width, pool=i == 0, kit=kit))
            layers.append(nn.Dropout(cfg.dropout))
            c = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(c, cfg.num_classes, bias=cfg.head_bias)
        self.recompute = False  # training passes keep a third of the activations (low_memory)

    @property
    def whitening(self) -> PatchWhitening | None:
        first = self.features[0] if len(self.features) else None
        return first if isinstance(first, PatchWhitening) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.recompute and self.training and torch.is_grad_enabled() and self.chainable:
            return self._forward_recomputed(x)
        return self.head(self.pool(self.features(x)).flatten(1)) * self.cfg.head_scale

    @property
    def chainable(self) -> bool:
        """Whether ``recompute`` applies: plain blocks, a whitening stem or none, no dropout."""
        cfg = self.cfg
        return cfg.block == "plain" and cfg.dropout == 0.0 and (cfg.stem == "whiten" or not cfg.stem_width)

    def _forward_recomputed(self, x: torch.Tensor) -> torch.Tensor:
        """The training forward pass with each BatchNorm-activation-convolution through ``norm_act_conv``
        (the same results, keeping a third of those activations for the backward pass)."""
        h, bn, act = x, None, None  # act: the activation still to apply to h (after bn, where there is one)
        for layer in self.features:
            if isinstance(layer, PatchWhitening):
                h = layer(h)
            elif isinstance(layer, (nn.GELU, nn.ReLU)):
                act = layer
            elif isinstance(layer, PlainBlock):
                h = norm_act_conv(h, bn, act, layer.conv) if act is not None else layer.conv(h)
                h, bn, act = layer.pool(h), layer.bn, layer.act
        if act is not None:
            h = act(bn(h) if bn is not None else h)
        return self.head(self.pool(h).flatten(1)) * self.cfg.head_scale


def keep_less(model: SmallCNN) -> None:
    """Have training passes keep less for the backward pass, with the same results (``low_memory``):
    BatchNorm and activation outputs recomputed, max pooling through the one-byte kernel."""
    model.recompute = True
    for m in model.modules():
        if isinstance(m, MaxPool2x2):
            m.use_kernel = True


def build_model(cfg: TrainConfig, device: torch.device | str = "cpu") -> SmallCNN:
    """The model as a run builds it: ``cfg.model`` on ``device`` in the run's memory layout, keeping less
    for the backward pass on a CPU where ``cfg.low_memory``. Seed first: it draws the initial weights."""
    model = SmallCNN(cfg.model).to(device, memory_format=memory_format(cfg))
    if cfg.low_memory and torch.device(device).type == "cpu":
        keep_less(model)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: nn.Module) -> int:
    """Forward FLOPs of one 32x32 image (a multiply-add counts as 2), by PyTorch's counter."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, 32, 32, device=device))
    model.train(was_training)
    return counter.get_total_flops()


@functools.lru_cache(maxsize=128)
def shape_cost(cfg: ModelConfig) -> tuple[int, int]:
    """(parameters, forward FLOPs) of one model shape, cached: call model_cost, which ignores dropout."""
    model = SmallCNN(cfg)
    return count_parameters(model), forward_flops(model)


def model_cost(cfg: ModelConfig) -> tuple[int, int]:
    """(parameters, forward FLOPs per image) of the model a config builds, counted once per shape.

    Counting FLOPs runs the model under PyTorch's counter (seconds on a slow CPU); a study
    asks for every trial, and dropout, the one model field a default study varies, changes
    neither number.
    """
    return shape_cost(dataclasses.replace(cfg, dropout=0.0))
