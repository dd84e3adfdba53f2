"""The Transformer around the attention kinds: positions, heads, masks."""

from __future__ import annotations

import math

import pytest
import torch

from harness.models.transformer import AttentionModel, sinusoidal_positions


def test_sinusoidal_positions_follow_the_formula() -> None:
    pe = sinusoidal_positions(50, 16)
    for pos in (0, 7, 49):
        for i in range(8):
            angle = pos / 10000 ** (2 * i / 16)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)


def _model(head: str, causal: bool = False, attention: str = "multihead") -> AttentionModel:
    torch.manual_seed(0)
    return AttentionModel(
        vocab_size=12,
        n_outputs=5,
        max_len=10,
        head=head,
        causal=causal,
        attention=attention,
        attention_params={},
        d_model=32,
        n_layers=2,
        d_ff=64,
        d_k=8,
        dropout=0.0,
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
