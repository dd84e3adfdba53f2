"""Optimizer registry: names used in grids mapped to torch.optim classes with documented defaults.

Each entry carries the hyper-parameters a user may set (`optim.<name>` on the command line or
in a grid), the learning rate used when none is given, and a log-spaced learning-rate grid for
the tune phase of the fair-comparison protocol. Defaults follow torch.optim's documentation
(Adam: betas 0.9/0.999, eps 1e-8, Kingma & Ba 2015), except SGD's momentum, 0.9 here.

Each entry's parameters are a pydantic model (`OptimParams` subclass: defaults, valid ranges,
descriptions; `torch_kwargs` turns them into the torch.optim arguments). Shared by every
optimizer (`OptimParams` itself): weight decay, an optional linear warm-up followed by cosine
decay to zero, and optional gradient clipping by global norm.

Weight decay applies only to weight matrices and embeddings (parameters with ndim >= 2), never
to biases, LayerNorm gains and biases, or parameters a module lists in its `no_decay` attribute
(additive attention's `v_a`), for every optimizer given a decay: nanoGPT's
`configure_optimizers` split (`param_groups`). Each optimizer's default decay is its model's
`weight_decay` default: 0 for all but AdamW.

AdamW's default decay, ADAMW_WEIGHT_DECAY = 0.1 (nanoGPT's and GPT-3's value; torch's default
is 0.01). Decoupled decay multiplies the decayed weights by (1 - lr * wd) every step, so its
whole effect over a run is about lr * wd * steps. Measured at the quick grid's budgets
(d_model 32, 2 layers, d_ff 64, lr 3e-3, multihead, seeds 0-2, a plain training loop,
not committed; figures in the README): the decayed weights' final norm against Adam's
  decay 0.01: -0.4% (text_cls, 150 steps), -0.5% (copy, 200 steps)
  decay 0.1:  -4.4%, -5.5%
  decay 0.3:  -12.6%, -15.6%
and mean |test acc(AdamW) - test acc(Adam)| over paired seeds, text_cls: 0.003 / 0.005 / 0.010
(copy: 1.0 for all). At 0.01 AdamW is Adam to within half a percent of the weights; 0.1 moves
them ten times as far without costing accuracy (text_cls mean 0.477 against Adam's 0.479;
0.3: 0.471). At these short budgets no decay separates the test metrics beyond the seed-to-seed
spread (about 0.03): the difference shows in the weights, and grows with longer runs and higher
learning rates (lr * wd * steps is 2 at lr 1e-2 over 2,000 steps, the top of the tuning grid).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, StrictBool, model_validator
from torch import nn

from tasks.params import NonNegative, Params, Real, invalid, validated

SCHEDULES = ("constant", "cosine")
ADAMW_WEIGHT_DECAY = 0.1  # see the module docstring for the measurement behind it

NonNegativeReal = Annotated[Real, Field(ge=0)]
Beta = Annotated[Real, Field(ge=0, lt=1)]  # torch.optim's range for betas and alpha-like rates


class OptimParams(Params):
    """What every optimizer takes (`optim.*`); subclasses add the optimizer's own."""

    weight_decay: NonNegativeReal = Field(
        0.0, description="decay of weight matrices and embeddings only (0 = off)"
    )
    warmup_steps: NonNegative = Field(0, description="steps of linear warm-up from 0")
    schedule: Literal[SCHEDULES] = Field(
        "constant", description="after warm-up: constant, or cosine decay to 0 at the last step"
    )
    grad_clip: NonNegativeReal = Field(
        0.0, description="clip the global gradient norm to this value (0 = off)"
    )

    def torch_kwargs(self) -> dict[str, Any]:
        """The optimizer's own arguments as its torch.optim class takes them."""
        return {}


class AdamParams(OptimParams):
    beta1: Beta = Field(0.9, description="decay of the first-moment average")
    beta2: Beta = Field(0.999, description="decay of the second-moment average")
    eps: NonNegativeReal = Field(1e-8, description="added to the denominator")

    def torch_kwargs(self) -> dict[str, Any]:
        return {"betas": (self.beta1, self.beta2), "eps": self.eps}


class AdamWParams(AdamParams):
    weight_decay: NonNegativeReal = Field(
        ADAMW_WEIGHT_DECAY, description="decoupled decay of weight matrices and embeddings"
    )


class SgdParams(OptimParams):
    momentum: NonNegativeReal = Field(0.9, description="heavy-ball momentum")
    nesterov: StrictBool = Field(False, description="Nesterov momentum (needs momentum > 0)")

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> SgdParams:
        if self.nesterov and self.momentum <= 0:  # torch.optim.SGD refuses it
            raise invalid("nesterov", "needs optim.momentum > 0")
        return self

    def torch_kwargs(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "nesterov": self.nesterov}


class RmspropParams(OptimParams):
    alpha: Beta = Field(0.99, description="decay of the squared-gradient average")
    eps: NonNegativeReal = Field(1e-8, description="added to the denominator")
    momentum: NonNegativeReal = Field(0.0, description="momentum (0 = off)")

    def torch_kwargs(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "eps": self.eps, "momentum": self.momentum}


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    cls: type[torch.optim.Optimizer]
    params: type[OptimParams]  # every `optim.*` parameter: defaults, ranges, descriptions
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
            AdamParams,
            1e-3,
            _ADAPTIVE_GRID,
            "Adam (Kingma & Ba 2015); weight decay, if any, added to the gradient (L2)",
        ),
        OptimizerSpec(
            "adamw",
            torch.optim.AdamW,
            AdamWParams,
            1e-3,
            _ADAPTIVE_GRID,
            "AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight decay",
        ),
        OptimizerSpec(
            "sgd",
            torch.optim.SGD,
            SgdParams,
            1e-1,
            _SGD_GRID,
            "SGD with heavy-ball momentum (optionally Nesterov)",
        ),
        OptimizerSpec(
            "rmsprop",
            torch.optim.RMSprop,
            RmspropParams,
            1e-3,
            _ADAPTIVE_GRID,
            "RMSprop (Hinton 2012), torch's defaults: alpha 0.99, eps 1e-8",
        ),
    )
}


def param_defaults(name: str) -> dict[str, Any]:
    """Every `optim.*` parameter of optimizer `name` with its default."""
    return OPTIMIZERS[name].params.defaults()


def decays(module: nn.Module, name: str, param: nn.Parameter) -> bool:
    """Whether weight decay applies to `param`, registered as `name` directly on `module`."""
    return param.ndim >= 2 and name not in getattr(module, "no_decay", ())


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters split into a decayed group (matrices, embeddings) and an undecayed
    one (biases, norms, `no_decay` parameters); each parameter once, in registration order."""
    decay: list[nn.Parameter] = []
    keep: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                (decay if decays(module, name, p) else keep).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": keep, "weight_decay": 0.0},
    ]


def build_optimizer(
    name: str, model: nn.Module, lr: float, params: Mapping[str, Any]
) -> torch.optim.Optimizer:
    """Optimizer `name` over `model`'s trainable parameters with `params` (any of its
    `optim.*` parameters; the rest keep their defaults); weight decay only on the parameters
    `decays` selects."""
    spec = OPTIMIZERS[name]
    p: OptimParams = validated(spec.params, params, "optim")
    return spec.cls(param_groups(model, p.weight_decay), lr=lr, **p.torch_kwargs())


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
