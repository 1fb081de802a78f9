"""The fast recipe's values, each written as its derivation with its reason; the config files come from here.

``configs/fast.json`` and ``configs/fast-muon.json`` are generated from ``FAST`` and ``FAST_MUON``
(``python -m cifar.recipes`` writes them; a test checks the committed files are what this module
makes). Most values are airbench's (Keller Jordan's fast CIFAR-10 scripts: airbench93's ``hyp`` and
its training loop), mapped onto this project's parametrisation; ``derivation`` is the value as its
source writes it, and the file holds that number.

Usage:
    python -m cifar.recipes            # rewrite configs/fast.json and configs/fast-muon.json
    cfg = recipe_config(FAST)          # the TrainConfig
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifar.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@dataclass(frozen=True)
class Value:
    key: str          # a config field (cifar/config.py)
    value: Any        # what the config file holds
    derivation: str   # how the source writes it (an arithmetic expression or the plain value)
    reason: str


A93 = "airbench93's"
FAST = (
    Value("val_size", 5000, "5000", "the project's held-out validation split (selection never reads the test set)"),
    Value("split_seed", 0, "0", "the one validation split every run and study shares"),
    Value("crop_padding", 2, "2", f"{A93} translate: 2-pixel shifts (reflect padding)"),
    Value("flip", True, "True", f"{A93} flip"),
    Value("alternating_flip", True, "True", f"{A93} loader (altflip): each image flipped on alternate epochs"),
    Value("cutout", 0, "0", f"none in {A93} recipe"),
    Value("pipeline", "tensor", "tensor", "the in-memory uint8 pipeline the alternating flip needs"),
    Value("widths", [64, 128, 128], "[64, 2*64, 2*64]", f"{A93} widths: base width 64 x (1, 2, 2)"),
    Value("depth", 2, "2", f"{A93} ConvGroup: two convs per stage"),
    Value("block", "plain", "plain", f"{A93} ConvGroup has no shortcut"),
    Value("stem", "whiten", "whiten", f"{A93} frozen 2x2 patch-whitening conv"),
    Value("activation", "gelu", "gelu", f"{A93} nn.GELU"),
    Value("bn_scale", False, "False", f"{A93} BatchNorm: the weight does not train"),
    Value("bn_eps", 1e-12, "1e-12", f"{A93} BatchNorm eps"),
    Value("bn_momentum", 0.4, "1 - 0.6", f"{A93} batchnorm_momentum 0.6 is PyTorch's 1 - momentum"),
    Value("dirac_init", True, "True", f"{A93} Conv.reset_parameters: identity on the first channels"),
    Value("dropout", 0.0, "0.0", f"none in {A93} network"),
    Value("head_scale", 1 / 9, "1/9", f"{A93} scaling_factor: the logits x 1/9"),
    Value("head_bias", False, "False", f"{A93} nn.Linear(..., bias=False)"),
    Value("epochs", 10, "10", "the recipe's reference budget here (airbench93 trains 11); a study sets its own target"),
    Value("batch_size", 1024, "1024", f"{A93} batch_size"),
    Value("optimizer", "sgd1024", "sgd1024", f"{A93} Nesterov SGD with lr and decay per 1024 examples"),
    Value("lr", 11.5, "11.5", f"{A93} lr per 1024 examples"),
    Value("momentum", 0.85, "0.85", f"{A93} momentum"),
    Value("nesterov", True, "True", f"{A93} SGD(nesterov=True)"),
    Value("weight_decay", 0.0153, "0.0153", f"{A93} weight_decay per 1024 examples"),
    Value("weight_decay_all", True, "True", f"{A93} decays every parameter, BatchNorm biases too"),
    Value("bias_lr_scale", 64.0, "64.0", f"{A93} bias_scaler: BatchNorm biases at 64x the lr"),
    Value("schedule", "triangle", "triangle", "airbench's triangle(start=0.2, end=0.07, peak=0.23)"),
    Value("warmup_fraction", 0.23, "0.23", "airbench's triangle peak: at 23% of the run"),
    Value("lr_start", 0.2, "0.2", "airbench's triangle start: 0.2 of the peak"),
    Value("lr_floor", 0.07, "0.07", "airbench's triangle end: 0.07 of the peak"),
    Value("label_smoothing", 0.2, "0.2", f"{A93} label_smoothing"),
    Value("whiten_bias_epochs", 3, "3", f"{A93} whiten_bias_epochs"),
    Value("lookahead", True, "True", "airbench's LookaheadState"),
    Value("lookahead_every", 5, "5", "airbench updates the average every 5 steps"),
    Value("lookahead_decay", 0.7738, "round(0.95**5, 4)",
          "airbench's alpha_schedule = 0.95**5 x (step/total)**3: 0.95 per step over 5 steps, to 4 places"),
    Value("lookahead_start", 0.2727, "round(3/11, 4)",
          "airbench93 starts its average again when the whitening bias freezes: after 3 of its 11 epochs"),
    Value("grad_clip", 0.0, "0.0", "none in airbench"),
    Value("early_stop_patience", 0, "0", "a fixed budget: the schedule is shares of the run"),
    Value("seed", 0, "0", "the study's and report's seed 0"),
)
# airbench94_muon's values mapped onto this parametrisation (docs/fast-recipe.md, "Muon for the filters")
A94M = "airbench94_muon's"
FAST_MUON = tuple(v for v in FAST if v.key not in ("schedule", "warmup_fraction", "lr_start", "lr_floor", "lookahead",
                                                 "lookahead_every", "lookahead_decay", "lookahead_start",
                                                 "epochs", "batch_size", "optimizer", "lr", "weight_decay")) + (
    Value("epochs", 11, "11", "the budget decided before its runs (0.157 PFLOP, under 0.16)"),
    Value("batch_size", 2000, "2000", f"{A94M} batch size"),
    Value("optimizer", "muon", "muon", "Muon for the conv filters, per-1024 SGD for the rest"),
    Value("lr", 6.5, "6.5", f"{A94M} SGD lrs per 1024 examples, for our head (x 1/9) and mean loss"),
    Value("muon_lr", 0.24, "0.24", f"{A94M} Muon lr"),
    Value("muon_momentum", 0.6, "0.6", f"{A94M} Muon momentum"),
    Value("weight_decay", 0.0157, "0.0157", f"{A94M} decay 2e-6 x batch, per 1024 examples for our head"),
    Value("schedule", "onecycle", "onecycle", f"{A94M} linear fall to zero"),
    Value("warmup_epochs", 0.0, "0.0", f"no warm-up in {A94M}"),
    Value("lookahead", False, "False", f"none in {A94M}"),
)
FILES = {"fast.json": FAST, "fast-muon.json": FAST_MUON}


def recipe_config(values: tuple[Value, ...]) -> TrainConfig:
    """The config: the recipe's values over the defaults."""
    return TrainConfig.from_dict(nested(values))


def nested(values: tuple[Value, ...]) -> dict[str, Any]:
    """The values as a config file holds them: data and model fields in their sections, in the fields' order."""
    default = TrainConfig().to_dict()
    order = [*default["data"], *default["model"], *default]
    out: dict[str, Any] = {"data": {}, "model": {}}
    for v in sorted(values, key=lambda v: order.index(v.key)):
        section = out["data"] if v.key in default["data"] else out["model"] if v.key in default["model"] else out
        section[v.key] = v.value
    return out


def main() -> int:
    for name, values in FILES.items():
        text = json.dumps(nested(values), indent=2) + "\n"
        (CONFIGS / name).write_text(text)
        print(f"wrote configs/{name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
