"""The search space, declared once as data: every parameter a study searches, and the config fields it sets.

Each ``Param`` has one distribution, whatever the other parameters are, so that
multivariate TPE and GP model them jointly (Optuna's intersection search space
keeps only parameters whose distribution never changes). The learning rate and
the weight decay are therefore searched as log-scale multipliers of the
optimizer's reference values (``lr_scale``, ``wd_scale``): for the base config's
own optimizer its own values, for another optimizer the values in ``REFERENCE``.
SGD is searched in its per-1024 parametrisation (``sgd1024``), where batch size,
learning rate and weight decay are independent.

Three readers use the one table: ``suggest_config`` (a trial's config),
``params_of`` (the trial parameters of a config, checked to lie inside the space,
so the baseline is enqueued as trial 0) and ``space_table`` (the README's table,
checked by a test). ``space="default"`` searches learning rate, batch size,
optimizer and dropout; ``space="extended"`` adds weight decay, label smoothing,
the weight average's decay, widths, cutout, translate and the warm-up share; ``space="cost"``, for
a study of accuracy against inference cost, adds the architecture (stage widths, depth, block) and the
test-time augmentation level, a parameter of inference, not of training (``inference=True``: it sets no
config field; the objective scores the trained model at that level, its latency measured at it).

Usage:
    cfg = suggest_config(optuna.trial.FixedTrial({...}), base)
    cfg = trial_config(frozen_trial, base)        # after the trial: the config it stored
    params = params_of(base, "default")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna

from cifar.config import DATA_LOCATION, TrainConfig, apply_overrides, flatten
from cifar.registry import Registry

# An optimizer's reference values where it is not the base config's own: the centre of its
# lr_scale and wd_scale ranges, and the BatchNorm learning-rate scale it trains with.
REFERENCE = {
    "sgd1024": {"lr": 11.5, "weight_decay": 0.0153, "bias_lr_scale": 64.0},  # the fast recipe's (airbench)
    "adamw": {"lr": 2e-3, "weight_decay": 0.05, "bias_lr_scale": 1.0},      # decoupled decay
    "adam": {"lr": 2e-3, "weight_decay": 0.0, "bias_lr_scale": 1.0},
}


def reference(optimizer: str, base: TrainConfig) -> dict[str, float]:
    """The values a multiplier of 1 stands for: the base config's own for its optimizer."""
    if optimizer == base.optimizer:
        return {"lr": base.lr, "weight_decay": base.weight_decay, "bias_lr_scale": base.bias_lr_scale}
    return dict(REFERENCE[optimizer])


@dataclass(frozen=True)
class Param:
    name: str                                  # the trial parameter
    choices: tuple = ()                        # categorical: the values to choose from
    low: float | None = None                   # float: the range [low, high]
    high: float | None = None
    log: bool = False                          # float: sample on a log scale
    scales: str | None = None                  # a multiplier of this field's reference value
    encode: Callable[[Any], Any] = field(default=lambda v: v, compare=False)  # config value -> trial value
    sets_field: str | None = None              # the config field it sets, where not its name
    inference: bool = False                    # sets no config field: how the trained model predicts

    @property
    def sets(self) -> str:
        """The config field the parameter sets."""
        return self.scales or self.sets_field or self.name

    def suggest(self, trial: optuna.trial.BaseTrial) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.name, self.choices)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def contains(self, value: Any) -> bool:
        if self.choices:
            return value in self.choices
        return self.low * (1 - 1e-9) <= value <= self.high * (1 + 1e-9)


SCALE = (0.2, 5.0)   # multipliers of the reference learning rate and weight decay (25x in all)
BATCH_SIZES = (256, 512, 1024)
WIDTHS = Param("widths", choices=("48,96,96", "64,128,128", "96,192,192", "64,256,256"),
               encode=lambda widths: ",".join(map(str, widths)))

# In suggestion order: the order fixes what a seeded sampler draws.
DEFAULT = (
    Param("optimizer", choices=tuple(REFERENCE)),
    Param("lr_scale", low=SCALE[0], high=SCALE[1], log=True, scales="lr"),
    Param("batch_size", choices=BATCH_SIZES),
    Param("dropout", low=0.0, high=0.3),
)
EXTENDED = DEFAULT + (
    Param("wd_scale", low=SCALE[0], high=SCALE[1], log=True, scales="weight_decay"),
    Param("label_smoothing", low=0.0, high=0.3),
    Param("lookahead_decay", low=0.6, high=0.95),
    WIDTHS,
    Param("cutout", choices=(0, 8, 12)),
    Param("crop_padding", choices=(0, 2, 4)),
    Param("warmup_fraction", low=0.1, high=0.4),
)
# For accuracy against inference cost (study/objectives.py): the default space, the architecture, whose
# stage widths span about 40x in FLOPs, and the TTA level (1 and 2: 2 and 6 forward passes per image);
# a study's latency objective measures what each costs on its machine. The widths are their own
# parameter, not WIDTHS with a cheaper choice: a stored study refuses a categorical whose choices changed.
COST = DEFAULT + (
    Param("stage_widths", choices=("32,64,64", "48,96,96", "64,128,128", "96,192,192", "64,256,256"),
          encode=WIDTHS.encode, sets_field="widths"),
    Param("depth", choices=(1, 2)),
    Param("block", choices=("plain", "residual")),
    Param("tta", choices=(0, 1, 2), inference=True),
)
SPACES: Registry[tuple[Param, ...]] = Registry("search space", {"default": DEFAULT, "extended": EXTENDED,
                                                                "cost": COST})
PARAMS = {p.name: p for space in (EXTENDED, COST) for p in space}  # every parameter of every space


def overrides_of(values: dict[str, Any], base: TrainConfig) -> dict[str, Any]:
    """The config fields that trial parameters ``values`` set on ``base``."""
    ref = reference(values.get("optimizer", base.optimizer), base)
    out: dict[str, Any] = dict(ref)  # a new optimizer brings its reference values; the loop sets the rest
    for name, value in values.items():
        p = PARAMS[name]
        if not p.inference:
            out[p.sets] = ref[p.scales] * value if p.scales else value
    return out


def inference_tta(params: dict[str, Any]) -> int:
    """The TTA level a trial's model predicts with (0 outside the cost space)."""
    return int(params.get("tta", 0))


def suggest_config(trial: optuna.trial.BaseTrial, base: TrainConfig, space: str = "default") -> TrainConfig:
    """The trial's config: ``base`` with the suggested fields replaced."""
    values = {p.name: p.suggest(trial) for p in SPACES.get(space)}
    return apply_overrides(base, overrides_of(values, base))


CONFIG_ATTR = "config"  # the user attribute in which a trial stores the config it ran (study/objective.py)


def trial_config(trial: optuna.trial.FrozenTrial, base: TrainConfig, space: str = "default") -> TrainConfig:
    """The config ``trial`` ran, as it stored it, with the data where ``base`` says it lies. A trial of a
    study made before trials stored their config (the committed reference studies) has it rebuilt from
    its parameters, as it was made."""
    if CONFIG_ATTR not in trial.user_attrs:
        return suggest_config(optuna.trial.FixedTrial(trial.params), base, space)
    ran = flatten(TrainConfig.from_dict(trial.user_attrs[CONFIG_ATTR]))
    return apply_overrides(base, {k: v for k, v in ran.items() if k not in DATA_LOCATION})


def params_of(cfg: TrainConfig, space: str = "default") -> dict[str, Any]:
    """The trial parameters that reproduce ``cfg`` as a base config (to enqueue the baseline as a trial):
    its own optimizer, so multipliers of 1, and an inference parameter's first choice (no TTA).

    Raises ValueError naming every parameter whose value lies outside the space.
    """
    fields = flatten(cfg)
    params = {p.name: 1.0 if p.scales else p.choices[0] if p.inference else p.encode(fields[p.sets])
              for p in SPACES.get(space)}
    bad = [p.name for p in SPACES.get(space) if not p.contains(params[p.name])]
    if bad:
        raise ValueError(f"base config is outside the {space} search space in {', '.join(bad)} "
                         f"({', '.join(f'{k}={params[k]}' for k in bad)}); see study/search_space.py")
    return params


def space_table() -> str:
    """Every space's parameters as one Markdown table (the docs'), a row per parameter and the spaces
    that search it."""
    rows = ["| parameter | values | scale | sets | spaces |", "|---|---|---|---|---|"]
    for p in PARAMS.values():
        if p.choices:
            values, scale = ", ".join(f"`{c}`" for c in p.choices), "categorical"
        else:
            values, scale = f"{p.low:g} to {p.high:g}", "log" if p.log else "linear"
        sets = (f"`{p.scales}` = reference x value" if p.scales else
                "inference only (TTA level)" if p.inference else f"`{p.sets}`")
        rows.append(f"| `{p.name}` | {values} | {scale} | {sets} | "
                    f"{', '.join(n for n in SPACES if p in SPACES.get(n))} |")
    return "\n".join(rows)


def reference_table() -> str:
    """The reference values of each optimizer, as a Markdown table."""
    rows = ["| optimizer | reference lr | reference weight decay | BatchNorm lr scale |", "|---|---|---|---|"]
    rows += [f"| `{k}` | {v['lr']:g} | {v['weight_decay']:g} | {v['bias_lr_scale']:g} |"
             for k, v in REFERENCE.items()]
    return "\n".join(rows)


SAMPLERS: Registry[Callable[[int], optuna.samplers.BaseSampler]] = Registry("sampler", {
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=8),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
    "gp": lambda seed: optuna.samplers.GPSampler(seed=seed),
})


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler that walks the search space (TPE multivariate: the space's choices interact)."""
    return SAMPLERS.get(name)(seed)
