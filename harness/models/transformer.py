"""A small pre-norm Transformer encoder around any registered attention kind.

token embedding + sinusoidal positions (Vaswani et al. 2017, sec. 3.5)
  -> n_layers x [x + attn(LN(x)); x + FF(LN(x))]   (pre-norm, Xiong et al. 2020)
  -> LN -> head

Heads: `token` predicts at every scored position (a boolean mask picks them, so unscored
positions cost nothing in the head), `classification` mean-pools the non-padded positions.

`d_k` is each attention layer's total query/key width (per head d_k / n_heads; see
harness.models.attention). `n_params(model)` counts trainable parameters (`model.n_params`);
`AttentionModel.attention_stats` gives the per-layer attention diagnostics of the run schema.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn

from harness.models.attention import build_attention, logit_stats

Head = Literal["token", "classification"]


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d))."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2) / d_model)
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(pos * inv_freq)
    pe[:, 1::2] = torch.cos(pos * inv_freq[: d_model // 2])
    return pe


class Block(nn.Module):
    def __init__(
        self,
        d_model: int,
        d_ff: int,
        d_k: int,
        attention: str,
        attention_params: dict[str, Any],
        dropout: float,
    ) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = build_attention(attention, d_model, d_k, **attention_params)
        self.ln2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        padding: torch.Tensor | None,
        causal: bool,
        need_weights: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, weights = self.attn(self.ln1(x), padding, causal=causal, need_weights=need_weights)
        x = x + self.drop(a)
        x = x + self.drop(self.ff(self.ln2(x)))
        return x, weights


class AttentionModel(nn.Module):
    def __init__(
        self,
        *,
        vocab_size: int,
        n_outputs: int,
        max_len: int,
        head: Head,
        causal: bool,
        attention: str,
        attention_params: dict[str, Any],
        d_model: int,
        n_layers: int,
        d_ff: int,
        d_k: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.head_kind, self.causal = head, causal
        self.embed = nn.Embedding(vocab_size, d_model)
        self.register_buffer("pos", sinusoidal_positions(max_len, d_model), persistent=False)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(d_model, d_ff, d_k, attention, attention_params, dropout) for _ in range(n_layers)
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_outputs)

    def forward(
        self,
        x: torch.Tensor,
        padding: torch.Tensor | None = None,
        score_mask: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and, when asked, each layer's attention weights (B, h, L, L).

        token head: logits (n_scored, n_outputs) for the positions where `score_mask` is True
        (all positions when it is None, flattened in row-major order).
        classification head: logits (B, n_outputs).
        """
        h = self.drop(self.embed(x) + self.pos[: x.shape[1]])
        maps = []
        for block in self.blocks:
            h, w = block(h, padding, self.causal, need_weights)
            if w is not None:
                maps.append(w)
        h = self.ln_f(h)
        if self.head_kind == "classification":
            return self.head(_mean_pool(h, padding)), maps
        h = h.reshape(-1, h.shape[-1]) if score_mask is None else h[score_mask]
        return self.head(h), maps

    @torch.no_grad()
    def attention_stats(
        self, x: torch.Tensor, padding: torch.Tensor | None = None
    ) -> list[tuple[float, float]]:
        """(logit_std, entropy) of each layer's attention on batch `x`, in layer order.

        Runs the model in eval mode (no dropout; the training flag is restored after), and scores
        each block's attention on that block's real input, LN(hidden state). The scores are the
        pre-softmax values exactly as they enter the softmax (after 1/sqrt(d_head) for scaled
        kinds), over the allowed (query, key) pairs: the causal and key-padding masks, and real
        (non-padded) query positions only. Per head, then averaged over heads: see
        `harness.models.attention.logit_stats`.
        """
        was_training = self.training
        self.eval()
        try:
            query_mask = None if padding is None else ~padding
            h = self.embed(x) + self.pos[: x.shape[1]]
            stats = []
            for block in self.blocks:
                scores, allowed = block.attn.logits(block.ln1(h), padding, causal=self.causal)
                stats.append(logit_stats(scores, allowed, query_mask))
                h, _ = block(h, padding, self.causal, False)
            return stats
        finally:
            self.train(was_training)


def n_params(model: nn.Module) -> int:
    """Number of trainable parameters (each shared tensor counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _mean_pool(h: torch.Tensor, padding: torch.Tensor | None) -> torch.Tensor:
    if padding is None:
        return h.mean(dim=1)
    keep = (~padding).unsqueeze(-1).to(h.dtype)
    return (h * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)
