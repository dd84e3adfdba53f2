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

    def __init__(self, d_model: int, d_k: int, n_heads: int = 4, d_head: int | None = None) -> None:
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
        d_attn: int | None = None,
        n_heads: int = 1,
        chunk_size: int = 0,
    ) -> None:
        super().__init__(d_model, d_k, n_heads=n_heads, d_head=d_attn, key_bias=False)
        if chunk_size < 0:
            raise ValueError(f"chunk_size must be >= 0, got {chunk_size}")
        self.d_attn, self.chunk_size = self.d_head, chunk_size
        bound = 1.0 / math.sqrt(self.d_attn)
        self.v_a = nn.Parameter(torch.empty(n_heads, self.d_attn).uniform_(-bound, bound))

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
            "v^T tanh(W_q x_i + W_k x_j), d_attn = d_k / n_heads per head (Bahdanau 2015)",
        ),
        AttentionKind(
            "multihead",
            MultiHeadAttention,
            {"n_heads": 4, "d_head": None},
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


def check_attention(kind: str, d_model: int, d_k: int, **params: Any) -> None:
    """Raise the ValueError `build_attention` would, without allocating any weights."""
    with torch.device("meta"):
        build_attention(kind, d_model, d_k, **params)
