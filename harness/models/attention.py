"""Attention kinds behind one interface, and the registry that names them.

Every kind is self-attention over one sequence with the same call:

    out, weights = attn(x, key_padding_mask=None, causal=False, need_weights=False)

x is (B, L, d_model); key_padding_mask is (B, L) bool with True = padded key (torch convention);
causal lets position i attend only to keys j <= i. out is (B, L, d_model); weights is the
(B, h, L, L) attention matrix when need_weights, else None.

Widths. `d_k` is the TOTAL query/key width of a layer for every kind: h heads of d_head = d_k / h
each (a d_k that h does not divide is a ValueError). So kinds compared at one d_k have equal
query/key width (q_proj / k_proj out features) and differ only in how they score. A per-head
width can be asked for explicitly instead: multihead's `d_head`, additive's `d_attn` (default
None = d_k / n_heads); the total is then n_heads * d_head and d_k is not used. Values have
d_v = d_model // h per head, and an output projection maps h * d_v back to d_model.

Shared by all kinds (class `Attention`): the projections, masking and head reshapes. A kind only
says how scores are computed (or, for multihead, the whole attend step):

    dot         softmax(Q K^T) V                                   (Luong et al. 2015)
    scaled_dot  softmax(Q K^T / sqrt(d_k)) V                       (Vaswani et al. 2017)
    additive    softmax_j(v^T tanh(W_q x_i + W_k x_j)) V            (Bahdanau et al. 2015)
    multihead   h heads of Q K^T / sqrt(d_head), concatenated      (Vaswani et al. 2017)

Scaled kinds divide by sqrt of the per-head width (d_k for the one-head scaled_dot).

Masked scores are filled with finfo(dtype).min, not -inf, so softmax never yields NaN; a query row
with no allowed key at all gets all-zero weights (and so out_proj's bias as output), which is
also what torch's scaled_dot_product_attention returns for such rows on CPU.

Diagnostics: `Attention.logits(x, ...)` gives every kind's pre-softmax scores exactly as they
enter the softmax (after any scaling) with the "may attend" mask, and `logit_stats` turns them
into the run schema's `attn/logit_std` and `attn/entropy` (see its docstring).

Registry: each kind is one `AttentionKind` entry naming its module class and its parameters
model (an `AttentionParams` subclass: defaults, ranges, descriptions, width checks). The
additive kind's chunked kernel lives in harness.models.additive. About 390 lines: every kind,
its parameters and the shared diagnostics on one page, so kinds are compared side by side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from harness.models.additive import additive_scores
from tasks.params import NonNegative, Params, Width, validated

# --------------------------------------------------------------------------- masking


def attention_mask(
    key_padding_mask: Tensor | None,
    causal: bool,
    length: int,
    device: torch.device | None = None,
) -> Tensor | None:
    """Boolean "may attend" mask broadcastable to (B, 1, L, L), or None when all is allowed."""
    allowed = None
    if key_padding_mask is not None:
        allowed = ~key_padding_mask.to(device=device, dtype=torch.bool)[:, None, None, :]
    if causal:
        tril = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        allowed = tril if allowed is None else allowed & tril
    return allowed


def masked_softmax(scores: Tensor, allowed: Tensor | None) -> Tensor:
    """softmax over keys; disallowed keys get exactly 0, fully masked rows are all 0."""
    if allowed is None:
        return scores.softmax(dim=-1)
    weights = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min).softmax(dim=-1)
    return weights.masked_fill(~allowed.any(dim=-1, keepdim=True), 0.0)


# --------------------------------------------------------------------------- base class


def head_width(d_k: int, n_heads: int, d_head: int | None = None) -> int:
    """Per-head query/key width: `d_head` when given, else d_k / n_heads (which must divide)."""
    if d_head is not None:
        if d_head < 1:
            raise ValueError(f"d_head={d_head} must be >= 1")
        return d_head
    if n_heads < 1 or d_k % n_heads != 0:
        raise ValueError(
            f"d_k={d_k} is not divisible by n_heads={n_heads} "
            f"(d_k is the total query/key width; per head it is d_k / n_heads)"
        )
    return d_k // n_heads


class Attention(nn.Module):
    """Projections, masking and head reshapes shared by every kind.

    Subclasses implement `scores(q, k) -> (B, h, L, L)`, the pre-softmax scores as they enter the
    softmax, and may override `attend` (the whole softmax-and-mix step) for speed.
    `d_k` is the total query/key width; `d_head` the per-head width (d_k / n_heads unless given).
    """

    def __init__(
        self,
        d_model: int,
        d_k: int,
        n_heads: int = 1,
        d_head: int | None = None,
        key_bias: bool = True,
    ) -> None:
        super().__init__()
        if n_heads < 1 or d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.d_head = head_width(d_k, n_heads, d_head)
        self.d_model, self.n_heads = d_model, n_heads
        self.d_k = n_heads * self.d_head  # total query/key width
        self.d_v = d_model // n_heads
        self.q_proj = nn.Linear(d_model, self.d_k)
        self.k_proj = nn.Linear(d_model, self.d_k, bias=key_bias)
        self.v_proj = nn.Linear(d_model, n_heads * self.d_v)
        self.out_proj = nn.Linear(n_heads * self.d_v, d_model)

    def _heads(self, t: Tensor, width: int) -> Tensor:
        """(B, L, h * width) -> (B, h, L, width)."""
        B, L, _ = t.shape
        return t.view(B, L, self.n_heads, width).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        key_padding_mask: Tensor | None = None,
        causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        B, L, _ = x.shape
        q = self._heads(self.q_proj(x), self.d_head)  # (B, h, L, d_head)
        k = self._heads(self.k_proj(x), self.d_head)  # (B, h, L, d_head)
        v = self._heads(self.v_proj(x), self.d_v)  # (B, h, L, d_v)
        allowed = attention_mask(key_padding_mask, causal, L, x.device)
        causal_only = causal and key_padding_mask is None
        out, weights = self.attend(q, k, v, allowed, causal_only, need_weights)
        out = out.transpose(1, 2).reshape(B, L, self.n_heads * self.d_v)
        return self.out_proj(out), weights

    def logits(
        self, x: Tensor, key_padding_mask: Tensor | None = None, causal: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Pre-softmax scores (B, h, L, L) as they enter the softmax, and the "may attend" mask
        (broadcastable to them, None = all allowed): the same for every kind, fused or not."""
        q = self._heads(self.q_proj(x), self.d_head)
        k = self._heads(self.k_proj(x), self.d_head)
        return self.scores(q, k), attention_mask(key_padding_mask, causal, x.shape[1], x.device)

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        allowed: Tensor | None,
        causal_only: bool,
        need_weights: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """weights = masked softmax of scores; out = weights @ V."""
        weights = masked_softmax(self.scores(q, k), allowed)
        return weights @ v, (weights if need_weights else None)

    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        raise NotImplementedError


def logit_stats(
    scores: Tensor, allowed: Tensor | None, query_mask: Tensor | None = None
) -> tuple[float, float]:
    """(logit_std, entropy) of one layer's scores (B, h, L, L), averaged over heads.

    Counted: the allowed (query, key) pairs (`allowed`, broadcastable to scores; None = all) whose
    query is a real position (`query_mask` (B, L), True = real; None = all).
    logit_std: per head, the standard deviation (population, ddof 0) of the counted scores over
    the whole batch; then the mean over heads.
    entropy: per head, the mean over counted query rows with at least one allowed key of
    -sum_j p_ij ln p_ij (nats), p the masked softmax of the row; then the mean over heads.
    A head with nothing counted gives NaN.
    """
    s = scores.detach().float()
    B, h, L, _ = s.shape
    ok = torch.ones(B, 1, L, L, dtype=torch.bool, device=s.device)
    if allowed is not None:
        ok = ok & allowed.to(s.device)
    if query_mask is not None:
        ok = ok & query_mask.to(device=s.device, dtype=torch.bool)[:, None, :, None]
    ok = ok.expand(B, h, L, L)
    n = ok.sum(dim=(0, 2, 3)).to(s.dtype)  # counted pairs per head
    zero = torch.zeros((), dtype=s.dtype, device=s.device)
    mean = torch.where(ok, s, zero).sum(dim=(0, 2, 3)) / n
    var = torch.where(ok, (s - mean[None, :, None, None]) ** 2, zero).sum(dim=(0, 2, 3)) / n
    logp = s.masked_fill(~ok, -math.inf).log_softmax(dim=-1)
    plogp = torch.where(ok, logp.exp() * logp, zero)
    rows = ok.any(dim=-1)  # (B, h, L): query rows with an allowed key
    ent = torch.where(rows, -plogp.sum(dim=-1), zero).sum(dim=(0, 2)) / rows.sum(dim=(0, 2))
    return var.sqrt().mean().item(), ent.mean().item()


# --------------------------------------------------------------------------- dot-product kinds


class DotAttention(Attention):
    """Unscaled dot product: softmax(Q K^T) V, one head (Luong et al. 2015)."""

    def __init__(self, d_model: int, d_k: int) -> None:
        super().__init__(d_model, d_k, n_heads=1)

    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        return q @ k.transpose(-2, -1)


class ScaledDotAttention(Attention):
    """Scaled dot product: softmax(Q K^T / sqrt(d_k)) V, one head (Vaswani et al. 2017)."""

    def __init__(self, d_model: int, d_k: int) -> None:
        super().__init__(d_model, d_k, n_heads=1)

    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        return (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)


class MultiHeadAttention(Attention):
    """h heads of scaled dot product, concatenated and projected (Vaswani et al. 2017).

    d_k is the total query/key width, d_k / n_heads per head; `d_head` sets the per-head width
    instead (total n_heads * d_head). Each head scales by 1 / sqrt(d_head).
    Uses F.scaled_dot_product_attention unless the weights are requested; `logits` (the
    diagnostics' path) computes the same scores explicitly.
    """

    def __init__(self, d_model: int, d_k: int, n_heads: int, d_head: int | None) -> None:
        super().__init__(d_model, d_k, n_heads=n_heads, d_head=d_head)

    scores = ScaledDotAttention.scores  # per head: Q K^T / sqrt(d_head)

    def attend(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        allowed: Tensor | None,
        causal_only: bool,
        need_weights: bool,
    ) -> tuple[Tensor, Tensor | None]:
        if need_weights:
            return super().attend(q, k, v, allowed, causal_only, need_weights)
        mask = None if causal_only else allowed
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal_only, scale=1.0 / math.sqrt(self.d_head)
        )
        return out, None


# --------------------------------------------------------------------------- additive kind


class AdditiveAttention(Attention):
    """Additive attention: score(q_i, k_j) = v^T tanh(W_q x_i + W_k x_j) (Bahdanau et al. 2015).

    W_q (with bias) and W_k (without) project straight to d_attn per head: d_k / n_heads by
    default, so the total attention width n_heads * d_attn equals d_k as for the other kinds;
    an explicit `d_attn` sets the per-head width instead. v is a learned d_attn vector per head
    (`v_a`, listed in `no_decay` so weight decay leaves it alone, like a bias). Scores are
    computed in chunks of query rows (`chunk_size`, 0 = automatic) by a custom autograd Function
    that keeps or recomputes each block for the backward pass (see `_AdditiveScores`).
    """

    no_decay = ("v_a",)  # parameters that are vectors in role, though stored as (h, d_attn)

    def __init__(
        self,
        d_model: int,
        d_k: int,
        d_attn: int | None,
        n_heads: int,
        chunk_size: int,
    ) -> None:
        super().__init__(d_model, d_k, n_heads=n_heads, d_head=d_attn, key_bias=False)
        if chunk_size < 0:
            raise ValueError(f"chunk_size must be >= 0, got {chunk_size}")
        self.d_attn, self.chunk_size = self.d_head, chunk_size
        bound = 1.0 / math.sqrt(self.d_attn)
        self.v_a = nn.Parameter(torch.empty(n_heads, self.d_attn).uniform_(-bound, bound))

    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        return additive_scores(q, k, self.v_a, self.chunk_size)


# --------------------------------------------------------------------------- parameters


class AttentionParams(Params):
    """A kind's parameters (`attention.*`): defaults, ranges and descriptions in one place.

    `heads` says how the kind splits its width, and `check_widths` refuses, before any run,
    the widths its module would reject; a kind with other constraints overrides it.
    """

    def heads(self) -> tuple[int, int | None]:
        """(number of heads, explicit per-head width or None for d_k / n_heads)."""
        return 1, None

    def check_widths(self, d_model: int, d_k: int) -> None:
        """Raise ValueError when the module cannot be built at these widths."""
        n_heads, per_head = self.heads()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        head_width(d_k, n_heads, per_head)


class AdditiveParams(AttentionParams):
    d_attn: Width | None = Field(
        None, description="per-head width of the tanh layer (default d_k / n_heads)"
    )
    n_heads: Width = Field(1, description="heads; must divide model.d_model")
    chunk_size: NonNegative = Field(0, description="query rows per block (0 = automatic)")

    def heads(self) -> tuple[int, int | None]:
        return self.n_heads, self.d_attn


class MultiHeadParams(AttentionParams):
    n_heads: Width = Field(4, description="heads; must divide model.d_model (and model.d_k)")
    d_head: Width | None = Field(
        None, description="per-head query/key width (default d_k / n_heads)"
    )

    def heads(self) -> tuple[int, int | None]:
        return self.n_heads, self.d_head


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class AttentionKind:
    """One registered kind: its module class, its parameters model, a one-line blurb."""

    name: str
    cls: type[Attention]
    params: type[AttentionParams]
    description: str


ATTENTION: dict[str, AttentionKind] = {
    k.name: k
    for k in [
        AttentionKind(
            "dot", DotAttention, AttentionParams, "softmax(QK^T)V, one head, unscaled (Luong 2015)"
        ),
        AttentionKind(
            "scaled_dot",
            ScaledDotAttention,
            AttentionParams,
            "softmax(QK^T/sqrt(d_k))V, one head (Vaswani 2017)",
        ),
        AttentionKind(
            "additive",
            AdditiveAttention,
            AdditiveParams,
            "v^T tanh(W_q x_i + W_k x_j), d_attn = d_k / n_heads per head (Bahdanau 2015)",
        ),
        AttentionKind(
            "multihead",
            MultiHeadAttention,
            MultiHeadParams,
            "h heads of scaled dot product, SDPA when weights not needed (Vaswani 2017)",
        ),
    ]
}


def build_attention(kind: str, d_model: int, d_k: int, **params: Any) -> Attention:
    """Instantiate a registered kind with `params` (the rest keep their defaults); a bad
    name, parameter or width is a ValueError of one line."""
    if kind not in ATTENTION:
        raise ValueError(f"unknown attention kind {kind!r}; choose from: {', '.join(ATTENTION)}")
    spec = ATTENTION[kind]
    checked: AttentionParams = validated(spec.params, params, "attention")
    checked.check_widths(d_model, d_k)
    return spec.cls(d_model, d_k, **checked.model_dump())
