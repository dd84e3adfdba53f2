"""The optimizer registry: documented defaults, grids, schedules, clipping-free construction."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from harness.optim import OPTIMIZERS, build_optimizer, build_scheduler, lr_factor, param_defaults


def _params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.ones(3))]


def test_registry_has_the_four_optimizers_with_log_spaced_grids() -> None:
    assert set(OPTIMIZERS) == {"adam", "adamw", "sgd", "rmsprop"}
    for spec in OPTIMIZERS.values():
        logs = [math.log10(lr) for lr in spec.lr_grid]
        steps = {round(b - a, 6) for a, b in itertools.pairwise(logs)}
        assert len(spec.lr_grid) >= 4 and all(0.4 < s < 0.6 for s in steps), spec.name
        assert min(spec.lr_grid) <= spec.default_lr <= max(spec.lr_grid)


def test_documented_defaults_reach_torch() -> None:
    adam = build_optimizer("adam", _params(), 1e-3, param_defaults("adam"))
    assert adam.defaults["betas"] == (0.9, 0.999) and adam.defaults["eps"] == 1e-8
    assert adam.defaults["weight_decay"] == 0
    adamw = build_optimizer("adamw", _params(), 1e-3, param_defaults("adamw"))
    assert adamw.defaults["weight_decay"] == 0.01  # torch's AdamW default
    sgd = build_optimizer("sgd", _params(), 0.1, param_defaults("sgd"))
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["nesterov"] is False
    nesterov = build_optimizer("sgd", _params(), 0.1, param_defaults("sgd") | {"nesterov": True})
    assert nesterov.defaults["nesterov"] is True
    rms = build_optimizer("rmsprop", _params(), 1e-3, param_defaults("rmsprop"))
    assert rms.defaults["alpha"] == 0.99 and rms.defaults["eps"] == 1e-8
    decayed = build_optimizer(
        "adam", _params(), 1e-3, param_defaults("adam") | {"weight_decay": 0.1}
    )
    assert decayed.defaults["weight_decay"] == 0.1


def test_warmup_then_cosine_decay() -> None:
    total, warmup = 100, 10
    factors = [lr_factor(s, total, warmup, "cosine") for s in range(total)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert factors[55] == pytest.approx(0.5, abs=1e-9)  # half-way through the decay
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))
    assert factors[-1] < 0.01
    assert [lr_factor(s, total, 0, "constant") for s in (0, 50, 99)] == [1.0, 1.0, 1.0]


def test_scheduler_drives_the_optimizer_lr() -> None:
    opt = build_optimizer("sgd", _params(), 1.0, param_defaults("sgd"))
    sched = build_scheduler(
        opt, 20, param_defaults("sgd") | {"warmup_steps": 4, "schedule": "cosine"}
    )
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert seen[-1] < 0.05
