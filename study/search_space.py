"""The search space: every ``suggest_*`` call of the study, each named after its config field.

``space="default"`` searches learning rate, batch size, optimizer (SGD with
momentum or Nesterov, Adam, AdamW, RMSprop) and dropout; ``space="extended"``
adds weight decay, label smoothing, block type, width and schedule.
The learning-rate range depends on the optimizer (SGD wants ~100x the rate of
the adaptive ones); Optuna allows that because the distribution kind is the same.

Usage:
    cfg = suggest_config(optuna.trial.FixedTrial({...}), base)
"""

from __future__ import annotations

from typing import Any

import optuna

from cifar.config import OPTIMIZERS, SCHEDULES, TrainConfig, apply_overrides

SPACES = ("default", "extended")
LR_RANGES = {"sgd": (0.02, 1.0), "adam": (2e-4, 1e-2), "adamw": (2e-4, 1e-2), "rmsprop": (1e-4, 3e-3)}
BATCH_SIZES = (64, 128, 256, 512)
WIDTHS = ("32,64,128", "48,96,192", "64,128,256", "96,192,384")


def suggest_config(trial: optuna.Trial, base: TrainConfig, space: str = "default") -> TrainConfig:
    """The trial's config: ``base`` with the suggested fields replaced."""
    if space not in SPACES:
        raise ValueError(f"unknown search space {space!r}; choose one of {', '.join(SPACES)}")
    optimizer = trial.suggest_categorical("optimizer", OPTIMIZERS)
    s: dict[str, Any] = {
        "optimizer": optimizer,
        "lr": trial.suggest_float("lr", *LR_RANGES[optimizer], log=True),
        "batch_size": trial.suggest_categorical("batch_size", BATCH_SIZES),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
    }
    if optimizer == "sgd":
        s["nesterov"] = trial.suggest_categorical("nesterov", (True, False))
    if space == "extended":
        s["weight_decay"] = trial.suggest_float("weight_decay", 1e-5, 5e-3, log=True)
        s["label_smoothing"] = trial.suggest_float("label_smoothing", 0.0, 0.2)
        s["block"] = trial.suggest_categorical("block", ("plain", "residual"))
        s["widths"] = trial.suggest_categorical("widths", WIDTHS)
        s["schedule"] = trial.suggest_categorical("schedule", SCHEDULES)
    return apply_overrides(base, s)


def params_of(cfg: TrainConfig, space: str = "default") -> dict[str, Any]:
    """The trial parameters that reproduce ``cfg`` (to enqueue the baseline as a trial)."""
    params: dict[str, Any] = {"optimizer": cfg.optimizer, "lr": cfg.lr, "batch_size": cfg.batch_size,
                              "dropout": cfg.model.dropout}
    if cfg.optimizer == "sgd":
        params["nesterov"] = cfg.nesterov
    if space == "extended":
        params.update(weight_decay=cfg.weight_decay, label_smoothing=cfg.label_smoothing,
                      block=cfg.model.block, widths=",".join(map(str, cfg.model.widths)),
                      schedule=cfg.schedule)
    # The baseline is enqueued as a trial: it must lie inside the space.
    lo, hi = LR_RANGES[cfg.optimizer]
    outside = {"lr": not lo <= cfg.lr <= hi, "batch_size": cfg.batch_size not in BATCH_SIZES,
               "dropout": cfg.model.dropout > 0.5}
    if space == "extended":
        outside.update(weight_decay=not 1e-5 <= cfg.weight_decay <= 5e-3,
                       label_smoothing=cfg.label_smoothing > 0.2, widths=params["widths"] not in WIDTHS)
    bad = [k for k, v in outside.items() if v]
    if bad:
        raise ValueError(f"base config is outside the {space} search space in {', '.join(bad)} "
                         f"({', '.join(f'{k}={params[k]}' for k in bad)}); see study/search_space.py")
    return params
