"""The Transformer around the attention kinds: positions, heads, masks; the task metrics."""

from __future__ import annotations

import math

import pytest
import torch

from harness.config import resolve
from harness.errors import UserError
from harness.models.attention import logit_stats
from harness.models.transformer import AttentionModel, n_params, sinusoidal_positions
from tasks import TASKS
from tasks.metrics import sum_per_example

METRICS = {task.metric.name: task.metric for task in TASKS.values()}


def test_sinusoidal_positions_follow_the_formula() -> None:
    pe = sinusoidal_positions(50, 16)
    for pos in (0, 7, 49):
        for i in range(8):
            angle = pos / 10000 ** (2 * i / 16)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)


def _model(
    head: str,
    causal: bool = False,
    attention: str = "multihead",
    d_k: int = 8,
    dropout: float = 0.0,
    seed: int = 0,
    d_model: int = 32,
    max_len: int = 10,
) -> AttentionModel:
    torch.manual_seed(seed)
    return AttentionModel(
        vocab_size=12,
        n_outputs=5,
        max_len=max_len,
        head=head,
        causal=causal,
        attention=attention,
        attention_params={},
        d_model=d_model,
        n_layers=2,
        d_ff=64,
        d_k=d_k,
        dropout=dropout,
    )


def test_token_head_scores_only_masked_positions() -> None:
    model = _model("token")
    x = torch.randint(0, 12, (3, 10))
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[:, 6:] = True
    logits, maps = model(x, score_mask=mask)
    assert logits.shape == (12, 5) and maps == []
    full, _ = model(x)
    assert full.shape == (30, 5)
    assert torch.allclose(full.view(3, 10, 5)[:, 6:].reshape(-1, 5), logits, atol=1e-6)


def test_classification_head_ignores_padding() -> None:
    model = _model("classification")
    x = torch.randint(2, 12, (2, 10))
    padding = torch.zeros(2, 10, dtype=torch.bool)
    padding[:, 6:] = True
    logits, _ = model(x, padding=padding)
    assert logits.shape == (2, 5)
    changed = x.clone()
    changed[:, 6:] = 0  # what sits at padded positions must not matter
    again, _ = model(changed, padding=padding)
    assert torch.allclose(logits, again, atol=1e-5)


def test_causal_model_does_not_see_the_future() -> None:
    model = _model("token", causal=True, attention="additive")
    x = torch.randint(0, 12, (2, 10))
    logits, maps = model(x, need_weights=True)
    assert len(maps) == 2 and maps[0].shape == (2, 1, 10, 10)
    changed = x.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 12
    again, _ = model(changed)
    assert torch.allclose(logits.view(2, 10, 5)[:, :5], again.view(2, 10, 5)[:, :5], atol=1e-5)
    assert not torch.allclose(logits.view(2, 10, 5)[:, 5:], again.view(2, 10, 5)[:, 5:])


# --------------------------------------------------------------------------- widths, size


def test_n_params_counts_trainable_parameters() -> None:
    model = _model("token", attention="additive")
    total = sum(p.numel() for p in model.parameters())
    assert n_params(model) == total
    model.embed.weight.requires_grad_(False)
    assert n_params(model) == total - 12 * 32
    # Equal d_k, equal width: the dot-product kinds have the same number of parameters.
    sizes = {
        kind: n_params(_model("token", attention=kind, d_k=16))
        for kind in ("dot", "scaled_dot", "multihead")
    }
    assert len(set(sizes.values())) == 1, sizes
    assert n_params(_model("token", attention="dot", d_k=32)) > sizes["dot"]


def test_resolve_rejects_d_k_not_divisible_by_heads() -> None:
    with pytest.raises(UserError, match=r"model\.d_k=30.*attention\.n_heads=4.*not divisible"):
        resolve("copy", "multihead", "adam", overrides={"model.d_k": 30})
    with pytest.raises(UserError, match=r"model\.d_k=30.*attention\.n_heads=4"):
        resolve("copy", "additive", "adam", overrides={"model.d_k": 30, "attention.n_heads": 4})
    assert resolve("copy", "dot", "adam", overrides={"model.d_k": 30}).model["d_k"] == 30
    cfg = resolve("copy", "multihead", "adam", overrides={"model.d_k": 30, "attention.d_head": 8})
    assert cfg.attention_params["d_head"] == 8


# --------------------------------------------------------------------------- diagnostics


def test_attention_stats_follow_each_blocks_input() -> None:
    model = _model("classification", attention="additive", dropout=0.5)
    model.train()
    x = torch.randint(2, 12, (4, 10))
    padding = torch.zeros(4, 10, dtype=torch.bool)
    padding[1, 6:] = True
    stats = model.attention_stats(x, padding)
    assert model.training  # the training flag is restored
    assert stats == model.attention_stats(x, padding)  # no dropout: the same twice
    assert len(stats) == 2 and all(math.isfinite(a) and math.isfinite(b) for a, b in stats)
    # By hand: block 1 scores its own input, LN(output of block 0), in eval mode.
    model.eval()
    with torch.no_grad():
        h = model.embed(x) + model.pos[:10]
        expected = []
        for block in model.blocks:
            scores, allowed = block.attn.logits(block.ln1(h), padding)
            expected.append(logit_stats(scores, allowed, ~padding))
            h, _ = block(h, padding, False, False)
    flat = [v for pair in stats for v in pair]
    assert flat == pytest.approx([v for pair in expected for v in pair], rel=1e-6)
    assert stats[0][0] != pytest.approx(stats[1][0], rel=1e-3)  # layers differ


def _init_logit_std(attention: str, d_k: int) -> float:
    """Layer-0 logit std at init, averaged over 3 models, d_model fixed at 32."""
    x = torch.randint(0, 12, (64, 16), generator=torch.Generator().manual_seed(0))
    stds = [
        _model("token", attention=attention, d_k=d_k, seed=s, max_len=16).attention_stats(x)[0][0]
        for s in range(3)
    ]
    return sum(stds) / len(stds)


def test_attn_logit_std_at_init_grows_as_sqrt_d_k_for_dot_and_stays_flat_for_scaled_dot() -> None:
    """Vaswani et al. 2017, footnote 4: q.k has variance d_k for unit-variance components."""
    dot = {d_k: _init_logit_std("dot", d_k) for d_k in (16, 64, 256)}
    scaled = {d_k: _init_logit_std("scaled_dot", d_k) for d_k in (16, 64, 256)}
    assert 3.0 < dot[256] / dot[16] < 5.5, dot  # sqrt(256 / 16) = 4
    assert 1.4 < dot[64] / dot[16] < 2.8, dot  # sqrt(4) = 2
    assert 0.7 < scaled[256] / scaled[16] < 1.4, scaled
    # Same d_k, the same projections: scaled_dot's logits are dot's over sqrt(d_k).
    assert scaled[64] == pytest.approx(dot[64] / 8, rel=1e-4)


# --------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("name", sorted(METRICS))
def test_metric_per_example_sums_add_up_to_its_value(name: str) -> None:
    """Each metric, on random outputs: per-example sums agree with a loop over examples, and
    sum(metric_sum) / sum(n_tokens) is the metric of all positions, inside its bounds."""
    metric, task = METRICS[name], next(t for t in TASKS.values() if t.metric.name == name)
    gen = torch.Generator().manual_seed(0)
    counts = torch.tensor([3, 1, 5, 2])  # scored positions of each of 4 examples
    logits = torch.randn(int(counts.sum()), 7, generator=gen)
    targets = torch.randint(0, 7, (int(counts.sum()),), generator=gen)
    token_loss = task.loss(logits, targets, reduction="none")
    score = metric.position_score(logits, targets, token_loss)
    assert score.shape == targets.shape

    sums = sum_per_example(torch.stack([score, token_loss]), counts)
    by_example = torch.split(torch.stack([score, token_loss]), counts.tolist(), dim=1)
    expected = torch.stack([part.sum(dim=1) for part in by_example], dim=1)
    assert torch.allclose(sums, expected, atol=1e-6)

    metric_sum = [v / metric.divisor for v in sums[0].tolist()]
    value = metric.value(score.sum().item(), int(counts.sum()))
    assert sum(metric_sum) / int(counts.sum()) == pytest.approx(value, rel=1e-6)
    lo, hi = metric.bounds
    assert lo <= value <= hi
    assert token_loss.mean().item() == pytest.approx(task.loss(logits, targets).item(), rel=1e-6)


def test_metric_direction_and_bounds_text() -> None:
    for metric in METRICS.values():
        good, bad = (1.0, 0.0) if metric.higher_is_better else (0.0, 1.0)
        assert metric.reached(good, 0.5) and not metric.reached(bad, 0.5)
        lo, hi = metric.bounds_text.split(",")
        assert (float(lo), float(hi)) == metric.bounds
