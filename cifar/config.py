"""Typed, frozen configuration for data, model and training.

One tree of dataclasses: ``TrainConfig`` holds a ``DataConfig`` and a
``ModelConfig``. It round-trips to JSON, rejects unknown keys and validates
every value with a message that names it. Field names are unique across the
tree, so the command line can say ``--lr 0.1`` or ``--dropout 0.2`` without a
prefix (``--model.dropout 0.2`` works too).

Usage:
    cfg = TrainConfig.from_dict(json.load(open("configs/smallcnn.json")))
    cfg = apply_overrides(cfg, {"lr": "0.1", "widths": "32,64,128"})
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The choices of the string fields, declared here (this module imports no other of the project); each
# is the key set of a registry, which checks its keys against these names when its module loads.
OPTIMIZERS = ("sgd", "sgd1024", "muon", "adam", "adamw", "rmsprop")   # cifar.optim.OPTIMIZERS
SCHEDULES = ("onecycle", "cosine", "step", "constant", "triangle")    # cifar.optim.SCHEDULES
BLOCKS = ("plain", "residual")                                        # cifar.model.BLOCKS
STEMS = ("conv", "whiten")                                            # cifar.model.SmallCNN._stem
ACTIVATIONS = ("relu", "gelu")                                        # cifar.model.ACTIVATIONS
PIPELINES = ("tensor", "torchvision")                                 # cifar.pipeline.PIPELINES
AMP_MODES = ("auto", "off", "bf16", "fp16")                           # cifar.runtime.resolve_amp
DATA_LOCATION = ("data_dir", "cache_dir")  # fields that say where the data is, not what a run trains on


MOST = 1_000_000  # no number of a config is larger in size (seeds: up to 2**32 - 1): a larger one is a typo

_OutOfRange = type("_OutOfRange", (ValueError,), {})  # a number outside every sensible range: NaN, a typo's zeros


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


@dataclass(frozen=True)
class DataConfig:
    data_dir: str = ""            # data location; "" means $CIFAR10_DIR, else ./data
    cache_dir: str = ""           # decoded-tensor cache; "" means ./data/cache (of the working directory)
    val_size: int = 5000          # training images held out for validation (stratified)
    split_seed: int = 0           # seed of the train/validation split
    train_fraction: float = 1.0   # share of the train split used (the study's cheap trials)
    crop_padding: int = 4         # reflect padding of the random crop, pixels (0 = no crop)
    flip: bool = True             # random horizontal flip
    alternating_flip: bool = False  # flip: each image on alternate epochs, half of them from the first
    cutout: int = 0               # side of the cutout square, pixels (0 = off)
    pipeline: str = "tensor"      # "tensor": batched on-device; "torchvision": per-image PIL
    num_workers: int = 2          # DataLoader workers of the torchvision pipeline

    def __post_init__(self) -> None:
        _check(self.val_size >= 0, f"val_size must be >= 0, got {self.val_size}")
        _check(0.0 < self.train_fraction <= 1.0, f"train_fraction must be in (0, 1], got {self.train_fraction}")
        _check(self.crop_padding >= 0, f"crop_padding must be >= 0, got {self.crop_padding}")
        _check(0 <= self.cutout <= 32, f"cutout must be in [0, 32], got {self.cutout}")
        _check(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        _check_choice("pipeline", self.pipeline, PIPELINES)
        _check(not self.alternating_flip or self.pipeline == "tensor",
               "alternating_flip needs pipeline tensor (the torchvision pipeline flips per image)")


@dataclass(frozen=True)
class ModelConfig:
    widths: tuple[int, ...] = (64, 128, 256)  # channels of each stage; each stage halves the size
    depth: int = 2                # blocks per stage; the first one pools and changes width
    block: str = "plain"          # "plain": conv-BN-ReLU; "residual": ResNet basic block
    stem_width: int = 32          # channels of the full-resolution stem conv (0 = no stem)
    dropout: float = 0.1          # dropout after each stage and before the head
    num_classes: int = 10         # outputs of the classification head
    stem: str = "conv"            # "conv": 3x3 conv-BN-act of stem_width; "whiten": frozen 2x2 patch whitening
    activation: str = "relu"      # relu | gelu
    bn_scale: bool = True         # BatchNorm learns a scale (False: only its shift, the bias, learns)
    bn_eps: float = 1e-5          # BatchNorm epsilon
    bn_momentum: float = 0.1      # weight of each batch in BatchNorm's running statistics
    dirac_init: bool = False      # identity init of each 3x3 conv's first channels
    head_scale: float = 0.125     # the logits are scaled by this (1/8: no softmax saturation early on)
    head_bias: bool = True        # the linear head has a bias

    def __post_init__(self) -> None:
        _check(len(self.widths) >= 1 and all(w > 0 for w in self.widths),
               f"widths must be positive channel counts, got {list(self.widths)}")
        _check(len(self.widths) <= 5, f"at most 5 stages fit a 32x32 image, got {len(self.widths)}")
        _check(self.depth >= 1, f"depth must be >= 1, got {self.depth}")
        _check_choice("block", self.block, BLOCKS)
        _check(self.stem_width >= 0, f"stem_width must be >= 0, got {self.stem_width}")
        _check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        _check(self.num_classes >= 2, f"num_classes must be >= 2, got {self.num_classes}")
        _check_choice("stem", self.stem, STEMS)
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check(self.bn_eps > 0, f"bn_eps must be > 0, got {self.bn_eps}")
        _check(0.0 < self.bn_momentum <= 1.0, f"bn_momentum must be in (0, 1], got {self.bn_momentum}")
        _check(self.head_scale > 0, f"head_scale must be > 0, got {self.head_scale}")


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 14              # passes over the train split
    batch_size: int = 256         # images per optimizer step
    optimizer: str = "sgd"        # a key of cifar.optim.OPTIMIZERS: sgd | sgd1024 | muon | adam | adamw | rmsprop
    lr: float = 0.2               # peak learning rate of the schedule (sgd1024: per 1024 examples)
    momentum: float = 0.9         # SGD/RMSprop momentum
    nesterov: bool = True         # Nesterov momentum (SGD only)
    muon_lr: float = 0.24         # muon: the conv filters' step (they are rescaled to a fixed norm each step)
    muon_momentum: float = 0.6    # muon: the conv filters' Nesterov momentum (the rest: momentum)
    weight_decay: float = 5e-4    # L2 penalty (decoupled for AdamW; sgd1024: per 1024 examples)
    schedule: str = "onecycle"    # a key of cifar.optim.SCHEDULES: onecycle | cosine | step | constant | triangle
    warmup_epochs: float = 2.0    # linear warmup length (onecycle and cosine)
    warmup_fraction: float = 0.23 # triangle: share of the run before the peak lr
    lr_start: float = 0.2         # triangle: lr at the first step, as a share of the peak
    lr_floor: float = 0.07        # triangle: lr at the last step, as a share of the peak
    bias_lr_scale: float = 1.0    # BatchNorm parameters train at lr x this (their decay step unchanged)
    weight_decay_all: bool = False  # decay biases and BatchNorm parameters too, not only weights
    whiten_bias_epochs: int = 0   # the whitening stem's bias trains this many epochs, then freezes (0 = always)
    lookahead: bool = False       # every lookahead_every steps, pull the weights to their moving average
    lookahead_every: int = 5      # steps between lookahead updates
    lookahead_decay: float = 0.774  # the average's decay per update at the end of the run (0.95**5)
    lookahead_start: float = 0.27 # share of the run before the average starts (3 of 11 epochs)
    label_smoothing: float = 0.1  # cross-entropy label smoothing
    grad_clip: float = 0.0        # max global gradient norm (0 = off)
    early_stop_patience: int = 0  # epochs without a new best val_acc before stopping (0 = off)
    seed: int = 0                 # seeds model init, shuffling, augmentation, dropout
    deterministic: bool = False   # torch.use_deterministic_algorithms
    device: str = "auto"          # auto | cpu | cuda | cuda:N
    amp: str = "auto"             # mixed precision: auto | off | bf16 | fp16
    channels_last: bool = True    # NHWC memory format (faster convolutions on CPU and GPU)
    eval_batch_size: int = 500    # images per step when evaluating (memory, not results)
    low_memory: bool = False      # CPU fp32 training: a third of the activations, freed memory returned (same results)
    tensorboard: bool = False     # also write TensorBoard event files

    def __post_init__(self) -> None:
        _check(self.epochs > 0, f"epochs must be > 0, got {self.epochs}")
        _check(self.batch_size > 0, f"batch_size must be > 0, got {self.batch_size}")
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _check(0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _check(not (self.low_memory and self.amp in ("bf16", "fp16")),
               f"low_memory recomputes in fp32 only; with it use amp auto or off, not {self.amp}")
        _check(self.muon_lr > 0 and 0.0 <= self.muon_momentum < 1.0,
               f"muon_lr must be > 0 and muon_momentum in [0, 1), got {self.muon_lr}, {self.muon_momentum}")
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check(self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        _check(0.0 <= self.warmup_fraction < 1.0, f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        _check(0.0 <= self.lr_start <= 1.0, f"lr_start must be in [0, 1], got {self.lr_start}")
        _check(0.0 <= self.lr_floor <= 1.0, f"lr_floor must be in [0, 1], got {self.lr_floor}")
        _check(self.bias_lr_scale > 0, f"bias_lr_scale must be > 0, got {self.bias_lr_scale}")
        _check(self.whiten_bias_epochs >= 0, f"whiten_bias_epochs must be >= 0, got {self.whiten_bias_epochs}")
        _check(self.lookahead_every >= 1, f"lookahead_every must be >= 1, got {self.lookahead_every}")
        _check(0.0 <= self.lookahead_decay <= 1.0, f"lookahead_decay must be in [0, 1], got {self.lookahead_decay}")
        _check(0.0 <= self.lookahead_start <= 1.0, f"lookahead_start must be in [0, 1], got {self.lookahead_start}")
        _check(0.0 <= self.label_smoothing < 1.0, f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        _check(self.grad_clip >= 0, f"grad_clip must be >= 0, got {self.grad_clip}")
        _check(self.early_stop_patience >= 0, f"early_stop_patience must be >= 0, got {self.early_stop_patience}")
        _check(self.eval_batch_size > 0, f"eval_batch_size must be > 0, got {self.eval_batch_size}")
        _check_choice("amp", self.amp, AMP_MODES)
        _check(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda"),
               f"unknown device {self.device!r}; use auto, cpu, cuda or cuda:N")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, d)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read config {path}: {e}") from None
        if not isinstance(d, dict):
            raise ValueError(f"config {path} must hold a JSON object")
        if set(d) == {"config", "provenance"}:  # a run directory's config.json
            d = d["config"]
        return cls.from_dict(d)


def _from_dict(cls: type, d: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in d:
        if key not in names:
            raise ValueError(f"unknown config key: {key!r}{_did_you_mean(key, names)}")
    kwargs = {}
    for key, value in d.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ValueError(f"config key {key!r} must be an object, got {value!r}")
            kwargs[key] = _from_dict(hint, value)
        else:
            kwargs[key] = _coerce(key, value, hint)
    return cls(**kwargs)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Convert a JSON or command-line value to the field's type, or raise naming it."""
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            if not isinstance(value, bool):
                raise ValueError
            return value
        if hint in (int, float):
            if isinstance(value, bool) or (hint is int and isinstance(value, float) and not value.is_integer()):
                raise ValueError
            number, (low, high) = hint(value), (0, 2**32 - 1) if key.endswith("seed") else (-MOST, MOST)
            if not low <= number <= high:  # NaN and infinity are not
                raise _OutOfRange(f"config key {key!r}: {value!r} is not a number in [{low:,}, {high:,}]")
            return number
        if hint is str:
            if not isinstance(value, str):
                raise ValueError
            return value
        if typing.get_origin(hint) is tuple:
            if isinstance(value, str):
                value = [v for v in value.replace(" ", "").split(",") if v]
            return tuple(_coerce(key, v, typing.get_args(hint)[0]) for v in value)
    except _OutOfRange:
        raise
    except (TypeError, ValueError):
        raise ValueError(f"config key {key!r}: cannot read {value!r} as {getattr(hint, '__name__', hint)}") from None
    raise TypeError(f"unsupported config type {hint!r}")  # internal: a new field type


def _flat_paths(cls: type, prefix: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    """Map every leaf field name (and its dotted form) to its path in the tree."""
    paths: dict[str, tuple[str, ...]] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            paths.update(_flat_paths(hint, prefix + (f.name,)))
        else:
            path = prefix + (f.name,)
            assert f.name not in paths, f"config field {f.name} is not unique"
            paths[f.name] = path
            paths[".".join(path)] = path
    return paths


FIELD_PATHS = _flat_paths(TrainConfig)


def _did_you_mean(key: str, names) -> str:
    close = difflib.get_close_matches(key.replace("-", "_"), list(names), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def flatten(cfg: TrainConfig) -> dict[str, Any]:
    """Every leaf field of the tree by its (unique) name, in declaration order."""
    out = {}
    for name, path in FIELD_PATHS.items():
        if "." not in name:
            node: Any = cfg
            for part in path:
                node = getattr(node, part)
            out[name] = node
    return out


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """Return cfg with leaf fields replaced; keys are field names or dotted paths."""
    d = cfg.to_dict()
    for key, value in overrides.items():
        path = FIELD_PATHS.get(key.replace("-", "_"))
        if path is None:
            raise ValueError(f"unknown config key: {key!r}{_did_you_mean(key, FIELD_PATHS)}")
        node = d
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
    return TrainConfig.from_dict(d)
