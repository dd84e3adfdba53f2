"""Optimizer registry: names used in grids mapped to torch.optim classes with documented defaults.

Each entry carries the hyper-parameters a user may set (`optim.<name>` on the command line or
in a grid), the learning rate used when none is given, and a log-spaced learning-rate grid for
the tune phase of the fair-comparison protocol. Defaults follow torch.optim's documentation
(Adam: betas 0.9/0.999, eps 1e-8, Kingma & Ba 2015), except SGD's momentum, 0.9 here.

Shared by every optimizer (`SHARED_PARAMS`): weight decay, an optional linear warm-up followed
by cosine decay to zero, and optional gradient clipping by global norm.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    cls: type[torch.optim.Optimizer]
    params: Mapping[str, Any]  # optimizer-specific hyper-parameters with their defaults
    default_lr: float
    lr_grid: tuple[float, ...]  # tried in the tune phase, log-spaced
    description: str


# Adaptive methods: 1e-4 .. 1e-2 in half-decades. SGD: 1e-3 .. 1 (its useful range is higher).
_ADAPTIVE_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
_SGD_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)

OPTIMIZERS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in (
        OptimizerSpec(
            "adam",
            torch.optim.Adam,
            {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
            1e-3,
            _ADAPTIVE_GRID,
            "Adam (Kingma & Ba 2015); weight decay, if any, added to the gradient (L2)",
        ),
        OptimizerSpec(
            "adamw",
            torch.optim.AdamW,
            {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
            1e-3,
            _ADAPTIVE_GRID,
            "AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight decay",
        ),
        OptimizerSpec(
            "sgd",
            torch.optim.SGD,
            {"momentum": 0.9, "nesterov": False},
            1e-1,
            _SGD_GRID,
            "SGD with heavy-ball momentum (optionally Nesterov)",
        ),
        OptimizerSpec(
            "rmsprop",
            torch.optim.RMSprop,
            {"alpha": 0.99, "eps": 1e-8, "momentum": 0.0},
            1e-3,
            _ADAPTIVE_GRID,
            "RMSprop (Hinton 2012), torch's defaults: alpha 0.99, eps 1e-8",
        ),
    )
}

# Hyper-parameters every optimizer accepts. weight_decay None means the optimizer's own
# default (0 for all but AdamW, whose torch default is 0.01).
SHARED_PARAMS: dict[str, Any] = {
    "weight_decay": None,
    "warmup_steps": 0,
    "schedule": "constant",  # or "cosine": decay to 0 at the last step, after warm-up
    "grad_clip": 0.0,  # clip the global gradient norm to this value; 0 = off
}
SCHEDULES = ("constant", "cosine")


def param_defaults(name: str) -> dict[str, Any]:
    """Every `optim.*` parameter of optimizer `name` with its default."""
    return {**SHARED_PARAMS, **OPTIMIZERS[name].params}


def build_optimizer(
    name: str, parameters: Iterable[torch.nn.Parameter], lr: float, params: Mapping[str, Any]
) -> torch.optim.Optimizer:
    """Instantiate optimizer `name` with resolved `params` (see `param_defaults`)."""
    spec = OPTIMIZERS[name]
    kwargs = {k: params[k] for k in spec.params}
    if "beta1" in kwargs:
        kwargs["betas"] = (kwargs.pop("beta1"), kwargs.pop("beta2"))
    if params["weight_decay"] is not None:
        kwargs["weight_decay"] = params["weight_decay"]
    return spec.cls(parameters, lr=lr, **kwargs)


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Factor on the base learning rate at `step` (0-based): linear warm-up, then the schedule."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, params: Mapping[str, Any]
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup, schedule = int(params["warmup_steps"]), str(params["schedule"])
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, schedule)
    )
