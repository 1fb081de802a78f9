"""Optimizers and learning-rate schedules, as name -> builder registries.

The config's choices (``TrainConfig.optimizer``, ``TrainConfig.schedule``) are
the keys of ``OPTIMIZERS`` and ``SCHEDULES``: adding an optimizer is one
registered function here. Weight decay applies to conv and linear weights only,
never to BatchNorm parameters or biases. Schedules are multipliers of the peak
learning rate, stepped once per batch.

Usage:
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch=len(batches))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cifar import config
from cifar.registry import Registry

if TYPE_CHECKING:
    from cifar.config import TrainConfig

ParamGroups = list[dict[str, Any]]  # "params", "lr_scale" (x the lr), "decay" (weight decay applies)
OPTIMIZERS: Registry[Callable[[ParamGroups, TrainConfig], torch.optim.Optimizer]] = Registry("optimizer")


def torch_groups(groups: ParamGroups, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """PyTorch param groups. A group trained at lr x s gets weight decay / s, so that its
    decay step (lr x decay) is the same as everyone else's: the scale speeds up learning only."""
    return [{"params": g["params"], "lr": lr * g["lr_scale"],
             "weight_decay": weight_decay / g["lr_scale"] if g["decay"] else 0.0} for g in groups]


@OPTIMIZERS.register("sgd")
def _sgd(groups: ParamGroups, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(torch_groups(groups, cfg.lr, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov and cfg.momentum > 0)


@OPTIMIZERS.register("sgd1024")
def _sgd1024(groups: ParamGroups, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Nesterov SGD with lr and weight decay per 1024 examples, corrected for momentum.

    With constant gradients, Nesterov momentum m makes steps 1 + 1/(1 - m) times the
    gradient; dividing that out, and counting the lr per 1024 examples, makes batch
    size, momentum, lr and weight decay tunable independently (Page's and airbench's
    parametrisation). Our loss is the batch mean, so the plain lr is lr x batch / scale,
    and the plain weight decay is weight_decay / lr: each step decays by
    weight_decay x batch / scale, whatever the lr.
    """
    lr = _per1024_lr(cfg)
    return torch.optim.SGD(torch_groups(groups, lr, cfg.weight_decay / cfg.lr), lr=lr, momentum=cfg.momentum,
                           nesterov=cfg.momentum > 0)


def _per1024_lr(cfg: TrainConfig) -> float:
    return cfg.lr * cfg.batch_size / (1024 * (1 + 1 / (1 - cfg.momentum)))


def orthogonalize(g: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """About U S' V^T for g = U S V^T, S' roughly within [0.5, 1.5]: a quintic Newton-Schulz iteration
    with Jordan's coefficients, chosen for a steep slope at zero rather than convergence to 1."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = g.shape[0] > g.shape[1]
    x = (g.T if tall else g) / (g.norm() + eps)  # the spectral norm is at most the Frobenius norm, 1
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Groups marked ``muon``: each filter is rescaled to norm sqrt(out channels), then moved by ``lr``
    times the orthogonalized Nesterov momentum of its gradient (Jordan's Muon as airbench94_muon uses it,
    3 Newton-Schulz steps, no weight decay). Other groups: Nesterov SGD, step for step torch.optim.SGD's.

    torch.optim.Muon takes 2-D parameters only and has no per-step rescaling, hence this class.
    """

    def __init__(self, groups: list[dict[str, Any]]):
        super().__init__(groups, {"weight_decay": 0.0, "muon": False})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:
        for group in self.param_groups:
            m = group["momentum"]
            for p in (q for q in group["params"] if q.grad is not None):
                g = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad
                state = self.state[p]
                if "momentum_buffer" in state:
                    state["momentum_buffer"].mul_(m).add_(g)
                else:
                    state["momentum_buffer"] = g.clone()
                g = g.add(state["momentum_buffer"], alpha=m)
                if group["muon"]:
                    p.mul_(math.sqrt(len(p)) / p.norm())
                    g = orthogonalize(g.reshape(len(g), -1)).view_as(p)
                p.add_(g, alpha=-group["lr"])


@OPTIMIZERS.register("muon")
def _muon(groups: ParamGroups, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Muon for the conv filters (at muon_lr, muon_momentum), sgd1024 for everything else."""
    filters = [p for g in groups for p in g["params"] if p.ndim == 4]
    rest = [{**g, "params": [p for p in g["params"] if p.ndim != 4]} for g in groups]
    sgd = [{**g, "momentum": cfg.momentum} for g in torch_groups(rest, _per1024_lr(cfg), cfg.weight_decay / cfg.lr)]
    return Muon(sgd + [{"params": filters, "lr": cfg.muon_lr, "momentum": cfg.muon_momentum, "muon": True}])


@OPTIMIZERS.register("adam")
def _adam(groups: ParamGroups, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(torch_groups(groups, cfg.lr, cfg.weight_decay), lr=cfg.lr)


@OPTIMIZERS.register("adamw")
def _adamw(groups: ParamGroups, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(torch_groups(groups, cfg.lr, cfg.weight_decay), lr=cfg.lr)


@OPTIMIZERS.register("rmsprop")
def _rmsprop(groups: ParamGroups, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(torch_groups(groups, cfg.lr, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum)


OPTIMIZERS.declared(config.OPTIMIZERS)


def param_groups(cfg: TrainConfig, model: nn.Module) -> ParamGroups:
    """Conv and linear weights (decayed); BatchNorm parameters (lr x bias_lr_scale); other biases.

    Frozen parameters (the whitening filters, a BatchNorm scale that does not learn) are left out.
    Biases and BatchNorm parameters are decayed only with weight_decay_all.
    """
    norm = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for p in m.parameters(recurse=False)}
    trained = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trained if p.ndim > 1], "lr_scale": 1.0, "decay": True},
        {"params": [p for p in trained if p.ndim <= 1 and id(p) in norm], "lr_scale": cfg.bias_lr_scale,
         "decay": cfg.weight_decay_all},
        {"params": [p for p in trained if p.ndim <= 1 and id(p) not in norm], "lr_scale": 1.0,
         "decay": cfg.weight_decay_all},
    ]


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(cfg.optimizer)(param_groups(cfg, model), cfg)


# ---------------------------------------------------------------- schedules


def _progress(step: int, steps: int) -> float:
    return min(1.0, step / max(1, steps))


@dataclass(frozen=True)
class Shape:
    """A schedule: the multiplier at ``step`` of the ``steps`` after the warm-up (``s``: the LrSchedule)."""
    multiplier: Callable[[int, int, LrSchedule], float]
    warms_up: bool  # whether warmup_epochs applies (a linear ramp before the shape)


def _onecycle(step: int, steps: int, s: LrSchedule) -> float:  # after a linear warm-up: linear decay to zero
    return 1.0 - _progress(step, steps)


def _cosine(step: int, steps: int, s: LrSchedule) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * _progress(step, steps)))


def _step(step: int, steps: int, s: LrSchedule) -> float:  # x0.1 at half and at three quarters of the run
    return 0.1 ** ((step >= steps // 2) + (step >= 3 * steps // 4))


def _constant(step: int, steps: int, s: LrSchedule) -> float:
    return 1.0


def _triangle(step: int, steps: int, s: LrSchedule) -> float:
    """From lr_start up to 1 at warmup_fraction of the run, then linearly down to lr_floor at its end:
    shares of the run, so one recipe works at any epoch budget."""
    peak = int(s.warmup_fraction * steps)
    if step < peak:
        return s.lr_start + (1.0 - s.lr_start) * step / peak
    return 1.0 + (s.lr_floor - 1.0) * _progress(step - peak, steps - peak)


SCHEDULES: Registry[Shape] = Registry("schedule", {
    "onecycle": Shape(_onecycle, warms_up=True),
    "cosine": Shape(_cosine, warms_up=True),
    "step": Shape(_step, warms_up=False),
    "constant": Shape(_constant, warms_up=False),
    "triangle": Shape(_triangle, warms_up=False),
}).declared(config.SCHEDULES)


class LrSchedule:
    """Multiplier of the peak lr at optimizer step ``step`` (the schedule steps per batch).

    Its attributes are plain values: LambdaLR's state_dict (in every checkpoint) holds them.
    """

    def __init__(self, kind: str, total_steps: int, warmup_steps: int, warmup_fraction: float = 0.0,
                 lr_start: float = 0.0, lr_floor: float = 0.0):
        self.kind, self.total = kind, max(1, total_steps)
        self.warmup = min(warmup_steps, self.total - 1) if SCHEDULES.get(kind).warms_up else 0
        self.warmup_fraction, self.lr_start, self.lr_floor = warmup_fraction, lr_start, lr_floor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        return SCHEDULES.get(self.kind).multiplier(step - self.warmup, self.total - self.warmup, self)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    schedule = LrSchedule(cfg.schedule, cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch),
                          cfg.warmup_fraction, cfg.lr_start, cfg.lr_floor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


# ---------------------------------------------------------------- lookahead


class Lookahead:
    """Weights pulled to their moving average: every ``lookahead_every`` steps from
    ``lookahead_start`` of the run on, average = lerp(average, weights, 1 - decay) and
    weights = average (BatchNorm statistics included). The decay grows as (step/total)^3
    towards ``lookahead_decay``: the run moves fast early and averages strongly at the end.
    ``sync`` at the end of every epoch leaves the weights equal to the average, so
    validation, checkpoints and the final model all use the averaged weights.
    """

    def __init__(self, cfg: TrainConfig, net: nn.Module, total_steps: int):
        self.net, self.every, self.decay, self.total = net, cfg.lookahead_every, cfg.lookahead_decay, total_steps
        self.start = math.ceil(cfg.lookahead_start * total_steps)
        self.average: list[torch.Tensor] | None = None

    def _tensors(self) -> list[torch.Tensor]:
        return [t for t in self.net.state_dict().values() if t.is_floating_point()]

    def step(self, step: int) -> None:
        """After optimizer step number ``step`` (1-based) of the run."""
        if step < self.start or step % self.every:
            return
        if self.average is None:
            self.average = [t.detach().clone() for t in self._tensors()]
            return
        decay = self.decay * (step / self.total) ** 3
        with torch.no_grad():
            for avg, t in zip(self.average, self._tensors()):
                avg.lerp_(t, 1 - decay)
                t.copy_(avg)

    def sync(self) -> None:
        if self.average is not None:
            with torch.no_grad():
                for avg, t in zip(self.average, self._tensors()):
                    t.copy_(avg)

    def state_dict(self) -> dict[str, bool]:
        # After sync the average equals the weights, which the checkpoint holds already.
        return {"started": self.average is not None}

    def load_state_dict(self, state: dict[str, bool]) -> None:
        self.average = [t.detach().clone() for t in self._tensors()] if state["started"] else None
