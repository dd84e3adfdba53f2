"""The additive attention kernel: Bahdanau scores computed chunk by chunk, with its own backward.

score[b,h,i,j] = v[h] . tanh(qa[b,h,i] + ka[b,h,j]) materialises a (B, h, Lq, Lk, d) tensor when
written directly (`additive_scores_naive`, the reference). `additive_scores` computes the same
scores in blocks of query rows through a custom autograd Function, so memory stays bounded and
the hot loop uses the faster sigmoid (see `_AdditiveScores`). `AdditiveAttention` in
harness.models.attention calls it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

# Elements of one (B, h, rows, L, d_attn) block that additive attention may hold at once:
# 2**20 float32 values are 4 MiB, small enough that the in-place passes over a block run in
# cache. Measured by benchmarks/attention.py: 2**18..2**20 were fastest at the default sizes,
# 2**22 was 30% slower (README, "Measured").
ADDITIVE_CHUNK_BUDGET = 2**20
# Up to this many elements in all (16 MiB of float32), the forward's blocks are kept for
# the backward instead of recomputed: memory stays bounded, and small cases skip a pass.
ADDITIVE_KEEP_BUDGET = 2**22


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
