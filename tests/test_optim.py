"""The optimizer registry: documented defaults, grids, schedules, clipping-free construction."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from harness.models.transformer import AttentionModel
from harness.optim import (
    ADAMW_WEIGHT_DECAY,
    OPTIMIZERS,
    build_optimizer,
    build_scheduler,
    lr_factor,
    param_defaults,
    param_groups,
)


def _params() -> torch.nn.Module:
    return torch.nn.Linear(3, 3)


def _model(attention: str = "additive") -> AttentionModel:
    torch.manual_seed(0)
    return AttentionModel(
        vocab_size=12,
        n_outputs=5,
        max_len=10,
        head="token",
        causal=False,
        attention=attention,
        attention_params={"n_heads": 2} if attention != "dot" else {},
        d_model=16,
        n_layers=2,
        d_ff=32,
        d_k=8,
        dropout=0.0,
    )


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_has_a_log_spaced_grid_around_its_default(name: str) -> None:
    spec = OPTIMIZERS[name]
    logs = [math.log10(lr) for lr in spec.lr_grid]
    steps = {round(b - a, 6) for a, b in itertools.pairwise(logs)}
    assert len(spec.lr_grid) >= 4 and all(0.4 < s < 0.6 for s in steps), spec.name
    assert min(spec.lr_grid) <= spec.default_lr <= max(spec.lr_grid)
    assert spec.name == name and spec.description


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_takes_its_parameters_and_steps(name: str) -> None:
    """The parameters model's values are the ones torch runs with, and one step with a
    gradient moves the weights (defaults straight from the model, none given)."""
    spec = OPTIMIZERS[name]
    model = _params()
    opt = build_optimizer(name, model, spec.default_lr, {})
    assert isinstance(opt, spec.cls)
    for key, value in spec.params().torch_kwargs().items():
        assert opt.defaults[key] == value, key
    assert opt.param_groups[0]["weight_decay"] == param_defaults(name)["weight_decay"]
    before = model.weight.detach().clone()
    model(torch.ones(2, 3)).sum().backward()
    opt.step()
    assert not torch.equal(model.weight, before)
    with pytest.raises(ValueError, match=r"^optim\.nope: unknown key"):
        build_optimizer(name, _params(), 1e-3, {"nope": 1})
    with pytest.raises(ValueError, match=r"^optim\.weight_decay=-1\.0: input should be"):
        build_optimizer(name, _params(), 1e-3, {"weight_decay": -1.0})


def test_nesterov_without_momentum_is_refused_before_torch() -> None:
    with pytest.raises(ValueError, match=r"^optim\.nesterov=True: needs optim\.momentum > 0"):
        build_optimizer("sgd", _params(), 0.1, {"nesterov": True, "momentum": 0.0})


def test_documented_defaults_reach_torch() -> None:
    adam = build_optimizer("adam", _params(), 1e-3, param_defaults("adam"))
    assert adam.defaults["betas"] == (0.9, 0.999) and adam.defaults["eps"] == 1e-8
    assert {g["weight_decay"] for g in adam.param_groups} == {0}
    adamw = build_optimizer("adamw", _params(), 1e-3, param_defaults("adamw"))
    assert param_defaults("adamw")["weight_decay"] == ADAMW_WEIGHT_DECAY > 0
    assert [g["weight_decay"] for g in adamw.param_groups] == [ADAMW_WEIGHT_DECAY, 0.0]
    sgd = build_optimizer("sgd", _params(), 0.1, param_defaults("sgd"))
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["nesterov"] is False
    nesterov = build_optimizer("sgd", _params(), 0.1, param_defaults("sgd") | {"nesterov": True})
    assert nesterov.defaults["nesterov"] is True
    rms = build_optimizer("rmsprop", _params(), 1e-3, param_defaults("rmsprop"))
    assert rms.defaults["alpha"] == 0.99 and rms.defaults["eps"] == 1e-8
    decayed = build_optimizer(
        "adam", _params(), 1e-3, param_defaults("adam") | {"weight_decay": 0.1}
    )
    assert [g["weight_decay"] for g in decayed.param_groups] == [0.1, 0.0]


# --------------------------------------------------------------------------- weight decay


def test_decay_only_matrices_and_embeddings() -> None:
    model = _model("additive")
    decay, keep = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and keep["weight_decay"] == 0.0
    ids = {id(p) for p in decay["params"]}
    names = dict(model.named_parameters())
    assert len(decay["params"]) + len(keep["params"]) == len(names)  # each exactly once
    for name, p in names.items():
        matrix = p.ndim >= 2 and not name.endswith("v_a")
        assert (id(p) in ids) == matrix, name
    # The cases that matter, by name: embeddings and projections decay; the rest does not.
    for name in ("embed.weight", "blocks.0.attn.q_proj.weight", "blocks.1.ff.0.weight"):
        assert id(names[name]) in ids, name
    for name in ("blocks.0.attn.v_a", "blocks.0.ln1.weight", "ln_f.bias", "head.bias"):
        assert id(names[name]) not in ids, name
    assert names["blocks.0.attn.v_a"].ndim == 2  # not decayed although a 2-D tensor


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
def test_zero_gradients_shrink_matrices_and_leave_the_rest(optimizer: str) -> None:
    """With zero gradients only weight decay moves a parameter: matrices shrink; biases,
    LayerNorm gains and additive's v_a stay exactly where they were (every optimizer)."""
    model = _model("additive")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(optimizer, model, 0.01, param_defaults(optimizer) | {"weight_decay": 0.2})
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in model.named_parameters():
        if p.ndim >= 2 and not name.endswith("v_a"):
            assert p.norm() < before[name].norm(), name
        else:
            assert torch.equal(p, before[name]), name
    if optimizer == "adamw":  # decoupled: p <- p (1 - lr wd)
        w = "blocks.0.attn.q_proj.weight"
        torch.testing.assert_close(dict(model.named_parameters())[w], before[w] * (1 - 0.01 * 0.2))


def test_adamw_default_decay_moves_matrices_and_adam_does_not() -> None:
    """The shipped defaults: AdamW decays (so it differs from Adam), Adam does not."""
    for name, shrinks in (("adamw", True), ("adam", False)):
        model = _model("multihead")
        w = model.blocks[0].attn.q_proj.weight
        w0 = w.detach().clone()
        opt = build_optimizer(name, model, 1e-2, param_defaults(name))
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        assert (w.norm() < w0.norm()) == shrinks, name


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
