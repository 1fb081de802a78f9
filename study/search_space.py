"""The search space, declared once as data: every parameter a study searches, named after its config field.

Each ``Param`` says its kind, its range or choices, log scale, and when it
applies (``when``: only if another parameter has a given value). Three readers
use the one table: ``suggest_config`` (a trial's config), ``params_of`` (the
trial parameters of a config, checked to lie inside the space, so the baseline
can be enqueued as trial 0) and ``space_table`` (the README's table, checked by
a test). ``space="default"`` searches learning rate, batch size, optimizer and
dropout; ``space="extended"`` adds weight decay, label smoothing, block type,
widths and schedule. The learning-rate range depends on the optimizer (SGD wants
~100x the rate of the adaptive ones).

Usage:
    cfg = suggest_config(optuna.trial.FixedTrial({...}), base)
    params = params_of(base, "default")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna

from cifar.config import SCHEDULES, TrainConfig, apply_overrides, flatten
from cifar.model import BLOCKS
from cifar.registry import Registry


@dataclass(frozen=True)
class Param:
    name: str                                  # the trial parameter and the config field it sets
    choices: tuple = ()                        # categorical: the values to choose from
    low: float | None = None                   # float: the range [low, high]
    high: float | None = None
    log: bool = False                          # float: sample on a log scale
    range_by: tuple[str, dict[str, tuple[float, float]]] | None = None  # (param, its value -> range)
    when: tuple[str, Any] | None = None        # applies only when param == value
    encode: Callable[[Any], Any] = field(default=lambda v: v, compare=False)  # config value -> trial value

    def applies(self, values: dict[str, Any]) -> bool:
        return self.when is None or values.get(self.when[0]) == self.when[1]

    def bounds(self, values: dict[str, Any]) -> tuple[float, float]:
        if self.range_by:
            by, ranges = self.range_by
            return ranges[values[by]]
        return self.low, self.high

    def suggest(self, trial: optuna.trial.BaseTrial, values: dict[str, Any]) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.name, self.choices)
        return trial.suggest_float(self.name, *self.bounds(values), log=self.log)

    def contains(self, value: Any, values: dict[str, Any]) -> bool:
        if self.choices:
            return value in self.choices
        low, high = self.bounds(values)
        return low <= value <= high


LR_RANGES = {"sgd": (0.02, 1.0), "adam": (2e-4, 1e-2), "adamw": (2e-4, 1e-2), "rmsprop": (1e-4, 3e-3)}
BATCH_SIZES = (64, 128, 256, 512)
WIDTHS = ("32,64,128", "48,96,192", "64,128,256", "96,192,384")

# In suggestion order: the order fixes what a seeded sampler draws.
DEFAULT = (
    Param("optimizer", choices=tuple(LR_RANGES)),  # the optimizers with a learning-rate range here
    Param("lr", log=True, range_by=("optimizer", LR_RANGES)),
    Param("batch_size", choices=BATCH_SIZES),
    Param("dropout", low=0.0, high=0.5),
    Param("nesterov", choices=(True, False), when=("optimizer", "sgd")),
)
EXTENDED = DEFAULT + (
    Param("weight_decay", low=1e-5, high=5e-3, log=True),
    Param("label_smoothing", low=0.0, high=0.2),
    Param("block", choices=BLOCKS.names),
    Param("widths", choices=WIDTHS, encode=lambda widths: ",".join(map(str, widths))),
    Param("schedule", choices=SCHEDULES),
)
SPACES: Registry[tuple[Param, ...]] = Registry("search space", {"default": DEFAULT, "extended": EXTENDED})


def suggest_config(trial: optuna.trial.BaseTrial, base: TrainConfig, space: str = "default") -> TrainConfig:
    """The trial's config: ``base`` with the suggested fields replaced."""
    values: dict[str, Any] = {}
    for p in SPACES.get(space):
        if p.applies(values):
            values[p.name] = p.suggest(trial, values)
    return apply_overrides(base, values)


def params_of(cfg: TrainConfig, space: str = "default") -> dict[str, Any]:
    """The trial parameters that reproduce ``cfg`` (to enqueue the baseline as a trial).

    Raises ValueError naming every parameter whose value lies outside the space.
    """
    fields = flatten(cfg)
    params: dict[str, Any] = {}
    bad = []
    for p in SPACES.get(space):
        if p.applies(params):
            params[p.name] = p.encode(fields[p.name])
            if not p.contains(params[p.name], params):
                bad.append(p.name)
    if bad:
        raise ValueError(f"base config is outside the {space} search space in {', '.join(bad)} "
                         f"({', '.join(f'{k}={params[k]}' for k in bad)}); see study/search_space.py")
    return params


def space_table(space: str = "extended") -> str:
    """The space as a Markdown table (the README's), one row per parameter."""
    default = {p.name for p in DEFAULT}
    rows = ["| parameter | values | scale | applies | space |", "|---|---|---|---|---|"]
    for p in SPACES.get(space):
        if p.choices:
            values, scale = ", ".join(f"`{c}`" for c in p.choices), "categorical"
        elif p.range_by:
            by, ranges = p.range_by
            values = "; ".join(f"{k}: {lo:g} to {hi:g}" for k, (lo, hi) in ranges.items())
            scale = "log" if p.log else "linear"
        else:
            values, scale = f"{p.low:g} to {p.high:g}", "log" if p.log else "linear"
        applies = f"{p.when[0]} = {p.when[1]}" if p.when else "always"
        rows.append(f"| `{p.name}` | {values} | {scale} | {applies} | "
                    f"{'default' if p.name in default else 'extended'} |")
    return "\n".join(rows)
