"""Attention kinds behind one interface, and the registry that names them.

Every kind is self-attention over one sequence with the same call:

    out, weights = attn(x, key_padding_mask=None, causal=False, need_weights=False)

x is (B, L, d_model); key_padding_mask is (B, L) bool with True = padded key (torch convention);
causal lets position i attend only to keys j <= i. out is (B, L, d_model); weights is the
(B, h, L, L) attention matrix when need_weights, else None.

Shared by all kinds (class `Attention`): queries and keys are projected to d_k per head, values to
d_v = d_model // n_heads per head, and an output projection maps h * d_v back to d_model. A kind
only says how scores are computed (or, for multihead, the whole attend step):

    dot         softmax(Q K^T) V                                   (Luong et al. 2015)
    scaled_dot  softmax(Q K^T / sqrt(d_k)) V                       (Vaswani et al. 2017)
    additive    softmax_j(v^T tanh(W_q x_i + W_k x_j)) V            (Bahdanau et al. 2015)
    multihead   h heads of scaled_dot, concatenated, projected     (Vaswani et al. 2017)

Masked scores are filled with finfo(dtype).min, not -inf, so softmax never yields NaN; a query row
with no allowed key at all gets all-zero weights (and so out_proj's bias as output), which is
also what torch's scaled_dot_product_attention returns for such rows on CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

# Elements of one (B, h, rows, L, d_attn) block that additive attention may hold at once:
# 2**20 float32 values are 4 MiB, small enough that the in-place passes over a block run in
# cache. Measured by benchmarks/attention.py: 2**18..2**20 were fastest at the default sizes,
# 2**22 was 30% slower (README, "Measured").
ADDITIVE_CHUNK_BUDGET = 2**20
# Up to this many elements in all (16 MiB of float32), the forward's blocks are kept for
# the backward instead of recomputed: memory stays bounded, and small cases skip a pass.
ADDITIVE_KEEP_BUDGET = 2**22


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


class Attention(nn.Module):
    """Projections, masking and head reshapes shared by every kind.

    Subclasses implement `scores(q, k) -> (B, h, L, L)`, or override `attend` entirely.
    `qk_width` is the per-head width of queries and keys (d_k unless a kind says otherwise).
    """

    def __init__(
        self,
        d_model: int,
        d_k: int,
        n_heads: int = 1,
        qk_width: int | None = None,
        key_bias: bool = True,
    ) -> None:
        super().__init__()
        if n_heads < 1 or d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.d_model, self.d_k, self.n_heads = d_model, d_k, n_heads
        self.qk_width = d_k if qk_width is None else qk_width
        self.d_v = d_model // n_heads
        self.q_proj = nn.Linear(d_model, n_heads * self.qk_width)
        self.k_proj = nn.Linear(d_model, n_heads * self.qk_width, bias=key_bias)
        self.v_proj = nn.Linear(d_model, n_heads * self.d_v)
        self.out_proj = nn.Linear(n_heads * self.d_v, d_model)

    def forward(
        self,
        x: Tensor,
        key_padding_mask: Tensor | None = None,
        causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        B, L, _ = x.shape
        h = self.n_heads
        q = self.q_proj(x).view(B, L, h, self.qk_width).transpose(1, 2)  # (B, h, L, d_k)
        k = self.k_proj(x).view(B, L, h, self.qk_width).transpose(1, 2)  # (B, h, L, d_k)
        v = self.v_proj(x).view(B, L, h, self.d_v).transpose(1, 2)  # (B, h, L, d_v)
        allowed = attention_mask(key_padding_mask, causal, L, x.device)
        causal_only = causal and key_padding_mask is None
        out, weights = self.attend(q, k, v, allowed, causal_only, need_weights)
        out = out.transpose(1, 2).reshape(B, L, h * self.d_v)
        return self.out_proj(out), weights

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
        return (q @ k.transpose(-2, -1)) / math.sqrt(self.d_k)


class MultiHeadAttention(Attention):
    """h heads of scaled dot product, concatenated and projected (Vaswani et al. 2017).

    Uses F.scaled_dot_product_attention unless the weights are requested.
    """

    def __init__(self, d_model: int, d_k: int, n_heads: int = 4) -> None:
        super().__init__(d_model, d_k, n_heads=n_heads)

    scores = ScaledDotAttention.scores  # per head: Q K^T / sqrt(d_k)

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
            q, k, v, attn_mask=mask, is_causal=causal_only, scale=1.0 / math.sqrt(self.d_k)
        )
        return out, None


# --------------------------------------------------------------------------- additive kind


def _auto_chunk_rows(
    batch: int, heads: int, length: int, d_attn: int, budget: int = ADDITIVE_CHUNK_BUDGET
) -> int:
    """Query rows per chunk so one (B, h, rows, L, d_attn) block holds at most `budget` elements.

    At least 1 row, at most `length` (one chunk when the whole tensor fits the budget).
    """
    per_row = batch * heads * length * d_attn
    return max(1, min(length, budget // max(per_row, 1)))


def additive_scores_naive(qa: Tensor, ka: Tensor, v: Tensor) -> Tensor:
    """Reference: score[b,h,i,j] = v[h] . tanh(qa[b,h,i] + ka[b,h,j]), whole tensor at once.

    qa: (B, h, Lq, d), ka: (B, h, Lk, d), v: (h, d) -> (B, h, Lq, Lk).
    """
    t = torch.tanh(qa[..., :, None, :] + ka[..., None, :, :])  # (B, h, Lq, Lk, d)
    return (t @ v[:, None, :, None]).squeeze(-1)


class _AdditiveScores(torch.autograd.Function):
    """Additive scores computed chunk by chunk over query rows, through the sigmoid.

    tanh(x) = 2 sigmoid(2x) - 1, and torch's CPU sigmoid is about 7x faster than its tanh
    (benchmarks/attention.py, 4M float32 elements: 0.9 ms against 6.7 ms), so each block
    holds s = sigmoid(2 qa_i + 2 ka_j) and the affine part is applied to the small results:
      score = v . (2s - 1) = 2 (v . s) - sum(v)
      dv    = sum_{b,i,j} g (2s - 1) = 2 sum g s - sum g
      dpre  = g v (1 - t^2) = 4 g v s (1 - s),  dqa = sum_j dpre,  dka = sum_i dpre
    where g = dL/dscore and v factors out of both sums. When the whole (B, h, Lq, Lk, d) block
    tensor is at most ADDITIVE_KEEP_BUDGET elements its blocks are saved for backward; above that
    only the inputs are saved and backward recomputes s per chunk, so memory stays bounded.
    """

    @staticmethod
    def forward(ctx: Any, qa: Tensor, ka: Tensor, v: Tensor, rows: int) -> Tensor:
        ctx.rows = rows
        keep = qa[..., :1, :].numel() * ka.shape[-2] * qa.shape[-2] <= ADDITIVE_KEEP_BUDGET
        qa2, ka2 = qa * 2, ka * 2
        v_sum = v.sum(dim=-1)[:, None, None]  # (h, 1, 1)
        blocks: list[Tensor] = []  # small enough: kept for backward, not recomputed
        scores = qa.new_empty(*qa.shape[:-1], ka.shape[-2])
        for s in range(0, qa.shape[-2], rows):
            sig = _sigmoid_block(qa2, ka2, s, rows)  # (B, h, r, Lk, d)
            # one matrix-vector product per head over all (b, i, j), not one per (b, h, i)
            vs = torch.einsum("bhrld,hd->bhrl", sig, v)
            scores[..., s : s + rows, :] = vs.mul_(2).sub_(v_sum)
            if keep:
                blocks.append(sig)
        ctx.kept = keep
        ctx.save_for_backward(qa2, ka2, v, *blocks)
        return scores

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        qa2, ka2, v, *blocks = ctx.saved_tensors
        rows = ctx.rows
        dqa, dka, gs = torch.empty_like(qa2), torch.zeros_like(ka2), torch.zeros_like(v)
        scratch = None  # one block-sized buffer for dpre, reused by every chunk
        for n, s in enumerate(range(0, qa2.shape[-2], rows)):
            g = grad[..., s : s + rows, :]  # (B, h, r, Lk)
            sig = blocks[n] if ctx.kept else _sigmoid_block(qa2, ka2, s, rows)
            gs += torch.einsum("bhrl,bhrld->hd", g, sig)  # one product per head
            if ctx.kept:  # kept blocks may serve another backward: sig stays as it is
                if scratch is None or scratch.shape != sig.shape:
                    scratch = torch.empty_like(sig)
                dpre = torch.addcmul(sig, sig, sig, value=-1, out=scratch)  # s (1 - s)
            else:  # the recomputed block's own buffer, still in cache
                dpre = sig.addcmul_(sig, sig, value=-1)
            dpre.mul_(g[..., None])  # g s (1 - s); the factor 4 v comes after the sums
            dqa[..., s : s + rows, :] = dpre.sum(dim=-2)
            dka += dpre.sum(dim=-3)
        v4 = (4 * v)[:, None, :]  # (h, 1, d), against (B, h, L, d)
        dv = gs.mul_(2).sub_(grad.sum(dim=(0, 2, 3))[:, None])
        return dqa.mul_(v4), dka.mul_(v4), dv, None


def _sigmoid_block(qa2: Tensor, ka2: Tensor, start: int, rows: int) -> Tensor:
    """sigmoid(2 qa_i + 2 ka_j) for query rows start..start+rows: (B, h, r, Lk, d)."""
    return (qa2[..., start : start + rows, None, :] + ka2[..., None, :, :]).sigmoid_()


def additive_scores(qa: Tensor, ka: Tensor, v: Tensor, chunk_size: int = 0) -> Tensor:
    """Same as `additive_scores_naive`, without materialising (B, h, Lq, Lk, d) at once.

    chunk_size = query rows per chunk; 0 picks it from ADDITIVE_CHUNK_BUDGET.
    """
    if chunk_size < 0:
        raise ValueError(f"chunk_size must be >= 0, got {chunk_size}")
    B, h, _, d = qa.shape
    rows = chunk_size or _auto_chunk_rows(B, h, ka.shape[-2], d)
    return _AdditiveScores.apply(qa, ka, v, rows)


class AdditiveAttention(Attention):
    """Additive attention: score(q_i, k_j) = v^T tanh(W_q x_i + W_k x_j) (Bahdanau et al. 2015).

    W_q (with bias) and W_k (without) project straight to d_attn per head (default d_k); v is a
    learned d_attn vector per head. Scores are computed in chunks of query rows (`chunk_size`,
    0 = automatic) by a custom autograd Function that keeps or recomputes each block for the
    backward pass (see `_AdditiveScores`).
    """

    def __init__(
        self,
        d_model: int,
        d_k: int,
        d_attn: int | None = None,
        n_heads: int = 1,
        chunk_size: int = 0,
    ) -> None:
        d_attn = d_k if d_attn is None else d_attn
        super().__init__(d_model, d_k, n_heads=n_heads, qk_width=d_attn, key_bias=False)
        if chunk_size < 0:
            raise ValueError(f"chunk_size must be >= 0, got {chunk_size}")
        self.d_attn, self.chunk_size = d_attn, chunk_size
        bound = 1.0 / math.sqrt(d_attn)
        self.v_a = nn.Parameter(torch.empty(n_heads, d_attn).uniform_(-bound, bound))

    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        return additive_scores(q, k, self.v_a, self.chunk_size)


# --------------------------------------------------------------------------- registry

Scalar = int | float | str | bool | None


@dataclass(frozen=True)
class AttentionKind:
    """One registered kind: its module class, its kind params with defaults, a one-line blurb."""

    name: str
    cls: type[Attention]
    params: dict[str, Scalar]
    description: str


ATTENTION: dict[str, AttentionKind] = {
    k.name: k
    for k in [
        AttentionKind("dot", DotAttention, {}, "softmax(QK^T)V, one head, unscaled (Luong 2015)"),
        AttentionKind(
            "scaled_dot",
            ScaledDotAttention,
            {},
            "softmax(QK^T/sqrt(d_k))V, one head (Vaswani 2017)",
        ),
        AttentionKind(
            "additive",
            AdditiveAttention,
            {"d_attn": None, "n_heads": 1, "chunk_size": 0},
            "v^T tanh(W_q x_i + W_k x_j), chunked over query rows (Bahdanau 2015)",
        ),
        AttentionKind(
            "multihead",
            MultiHeadAttention,
            {"n_heads": 4},
            "h heads of scaled dot product, SDPA when weights not needed (Vaswani 2017)",
        ),
    ]
}


def build_attention(kind: str, d_model: int, d_k: int, **params: Any) -> Attention:
    """Instantiate a registered kind, overlaying `params` on its defaults."""
    if kind not in ATTENTION:
        raise ValueError(f"unknown attention kind {kind!r}; choose from: {', '.join(ATTENTION)}")
    spec = ATTENTION[kind]
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        valid = ", ".join(spec.params) or "(none)"
        raise ValueError(f"unknown param {unknown[0]!r} for attention {kind!r}; valid: {valid}")
    return spec.cls(d_model, d_k, **{**spec.params, **params})
