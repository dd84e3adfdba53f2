"""Tests for harness.models.attention (every registered kind, plus kind-specific equivalences)
and harness.models.additive (the chunked additive kernel)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from harness.models.additive import (
    ADDITIVE_CHUNK_BUDGET,
    ADDITIVE_KEEP_BUDGET,
    _auto_chunk_rows,
    additive_scores,
    additive_scores_naive,
)
from harness.models.attention import (
    ATTENTION,
    Attention,
    build_attention,
    logit_stats,
    masked_softmax,
)

B, L, D_MODEL, D_K = 3, 9, 16, 8

# Every registered kind with its defaults, plus a multi-head, chunked additive variant.
CONFIGS = [(kind, {}) for kind in ATTENTION] + [
    ("additive", {"n_heads": 2, "d_attn": 6, "chunk_size": 2}),
    ("multihead", {"n_heads": 2}),
]
IDS = [kind + "".join(f"-{k}={v}" for k, v in p.items()) for kind, p in CONFIGS]


def make(kind: str, params: dict, seed: int = 0, d_k: int = D_K) -> Attention:
    torch.manual_seed(seed)
    return build_attention(kind, D_MODEL, d_k, **params)


def inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """x and a key_padding_mask that pads the last 3 positions of row 1 and the last 1 of row 2."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, D_MODEL, generator=g)
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[1, -3:] = True
    pad[2, -1:] = True
    return x, pad


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize("kind", list(ATTENTION))
def test_every_kind_builds_from_its_parameters_model(kind: str) -> None:
    """A kind's defaults live in its parameters model only: building with none given uses
    them, and the module reports the heads the model declares."""
    spec = ATTENTION[kind]
    assert spec.name == kind and spec.description and "\n" not in spec.description
    m = build_attention(kind, D_MODEL, D_K)
    assert isinstance(m, spec.cls)
    n_heads, per_head = spec.params().heads()
    assert m.n_heads == n_heads and m.d_head == (per_head or D_K // n_heads)
    with pytest.raises(ValueError, match=r"^attention\.nope: unknown key$"):
        build_attention(kind, D_MODEL, D_K, nope=1)


def test_build_overlays_params() -> None:
    m = build_attention("additive", D_MODEL, D_K, n_heads=2, d_attn=5)
    assert (m.n_heads, m.d_attn, m.chunk_size) == (2, 5, 0)
    assert build_attention("multihead", D_MODEL, D_K).n_heads == 4
    assert build_attention("dot", D_MODEL, D_K).n_heads == 1


def test_unknown_kind_and_param_errors() -> None:
    with pytest.raises(ValueError, match=r"'nope'") as err:
        build_attention("nope", D_MODEL, D_K)
    assert all(name in str(err.value) for name in ATTENTION)  # the choices are listed
    with pytest.raises(ValueError, match=r"^attention\.n_heads: unknown key"):
        build_attention("dot", D_MODEL, D_K, n_heads=2)
    with pytest.raises(ValueError, match=r"^attention\.n_heads=0: input should be greater"):
        build_attention("multihead", D_MODEL, D_K, n_heads=0)


@pytest.mark.parametrize("kind", ["multihead", "additive"])
def test_d_model_not_divisible_by_heads(kind: str) -> None:
    with pytest.raises(ValueError, match="not divisible by n_heads=3"):
        build_attention(kind, 16, D_K, n_heads=3)


# --------------------------------------------------------------------------- widths


@pytest.mark.parametrize("d_k", [8, 24, 64])
def test_equal_d_k_gives_equal_total_query_key_width(d_k: int) -> None:
    """model.d_k is the total query/key width for every kind, whatever its number of heads."""
    widths = {}
    for kind, params in [(kind, {}) for kind in ATTENTION] + [
        ("multihead", {"n_heads": 2}),
        ("additive", {"n_heads": 4}),
    ]:
        m = build_attention(kind, 32, d_k, **params)
        assert m.q_proj.out_features == m.k_proj.out_features == m.d_k, kind
        assert m.d_head * m.n_heads == m.d_k, kind
        widths[(kind, m.n_heads)] = m.d_k
    assert set(widths.values()) == {d_k}, widths
    assert build_attention("multihead", 32, d_k, n_heads=4).d_head == d_k // 4
    additive = build_attention("additive", 32, d_k, n_heads=4)
    assert additive.v_a.shape == (4, d_k // 4) and additive.d_attn == d_k // 4


@pytest.mark.parametrize(("kind", "param"), [("multihead", "d_head"), ("additive", "d_attn")])
def test_explicit_per_head_width(kind: str, param: str) -> None:
    m = build_attention(kind, 32, 10, n_heads=4, **{param: 6})  # 10 % 4 != 0, but d_k is unused
    assert (m.d_head, m.d_k, m.q_proj.out_features) == (6, 24, 24)


@pytest.mark.parametrize("kind", ["multihead", "additive"])
def test_d_k_not_divisible_by_heads_is_rejected(kind: str) -> None:
    with pytest.raises(ValueError, match=r"d_k=10 is not divisible by n_heads=4"):
        build_attention(kind, 32, 10, n_heads=4)
    params = ATTENTION[kind].params(n_heads=4)  # the check a grid gets before any run
    with pytest.raises(ValueError, match=r"d_k=10 is not divisible by n_heads=4"):
        params.check_widths(32, 10)
    params.check_widths(32, 12)  # divisible: no error


@pytest.mark.parametrize("n_heads", [1, 2, 4])
def test_multihead_scales_by_sqrt_of_per_head_width(n_heads: int) -> None:
    m = make("multihead", {"n_heads": n_heads}, d_k=16)
    x, _ = inputs()
    scores, allowed = m.logits(x)
    assert allowed is None
    d_head = 16 // n_heads
    q = m.q_proj(x).view(B, L, n_heads, d_head).transpose(1, 2)
    k = m.k_proj(x).view(B, L, n_heads, d_head).transpose(1, 2)
    torch.testing.assert_close(scores, q @ k.transpose(-2, -1) / math.sqrt(d_head))


# --------------------------------------------------------------------------- diagnostics


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("kind", "params"), CONFIGS, ids=IDS)
def test_logits_are_what_the_softmax_sees(kind: str, params: dict, causal: bool) -> None:
    """Every kind (multihead's fused path too) gives the scores whose masked softmax is the
    attention the forward pass uses."""
    m = make(kind, params)
    x, pad = inputs()
    scores, allowed = m.logits(x, key_padding_mask=pad, causal=causal)
    _, w = m(x, key_padding_mask=pad, causal=causal, need_weights=True)
    assert scores.shape == (B, m.n_heads, L, L)
    torch.testing.assert_close(masked_softmax(scores, allowed), w, atol=1e-6, rtol=1e-5)


def test_entropy_of_constant_scores_is_log_of_allowed_keys() -> None:
    scores = torch.full((2, 3, L, L), 1.7)
    std, ent = logit_stats(scores, None)
    assert std == pytest.approx(0.0, abs=1e-6)
    assert ent == pytest.approx(math.log(L), rel=1e-6)
    # Causal: row i has i + 1 allowed keys; the mean over rows of ln(i + 1).
    tril = torch.ones(L, L, dtype=torch.bool).tril()
    _, ent_causal = logit_stats(scores, tril)
    assert ent_causal == pytest.approx(sum(math.log(i + 1) for i in range(L)) / L, rel=1e-6)


def test_logit_stats_per_head_over_allowed_pairs() -> None:
    """Against a direct loop: std per head over allowed pairs of real queries, entropy per head
    over rows, then the mean over heads; a masked-out score never counts, however large."""
    g = torch.Generator().manual_seed(0)
    h = 3
    scores = torch.randn(B, h, L, L, generator=g) * torch.tensor([0.5, 2.0, 5.0])[:, None, None]
    _, pad = inputs()
    allowed = (~pad)[:, None, None, :] & torch.ones(L, L, dtype=torch.bool).tril()
    scores_junk = scores.masked_fill(~allowed, 1e6)
    stds, ents = [], []
    for head in range(h):
        vals, rows = [], []
        for b in range(B):
            for i in range(L):
                keys = allowed[b, 0, i]
                if pad[b, i] or not keys.any():
                    continue
                row = scores[b, head, i][keys]
                vals.append(row)
                p = row.softmax(-1)
                rows.append(-(p * p.log()).sum())
        stds.append(torch.cat(vals).std(correction=0))
        ents.append(torch.stack(rows).mean())
    std, ent = logit_stats(scores_junk, allowed, query_mask=~pad)
    assert std == pytest.approx(torch.stack(stds).mean().item(), rel=1e-5)
    assert ent == pytest.approx(torch.stack(ents).mean().item(), rel=1e-5)


def test_negative_chunk_size_rejected() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        build_attention("additive", D_MODEL, D_K, chunk_size=-1)
    with pytest.raises(ValueError, match="chunk_size"):
        additive_scores(*(torch.zeros(1, 1, 2, 2),) * 2, torch.zeros(1, 2), chunk_size=-1)


# --------------------------------------------------------------------------- every kind


@pytest.mark.parametrize(("kind", "params"), CONFIGS, ids=IDS)
def test_shapes(kind: str, params: dict) -> None:
    m = make(kind, params)
    x, _ = inputs()
    out, w = m(x, need_weights=True)
    assert out.shape == (B, L, D_MODEL)
    assert w is not None and w.shape == (B, m.n_heads, L, L)
    out2, w2 = m(x)
    assert out2.shape == (B, L, D_MODEL) and w2 is None


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("kind", "params"), CONFIGS, ids=IDS)
def test_padded_keys_get_zero_weight_and_rows_sum_to_one(
    kind: str, params: dict, causal: bool
) -> None:
    x, pad = inputs()
    _, w = make(kind, params)(x, key_padding_mask=pad, causal=causal, need_weights=True)
    assert w is not None
    assert torch.all(w[pad[:, None, None, :].expand_as(w)] == 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(B, w.shape[1], L))
    if not causal:  # and real keys keep their weight
        assert torch.all(w[1, :, :, : L - 3] > 0)


@pytest.mark.parametrize(("kind", "params"), CONFIGS, ids=IDS)
def test_causal_mask(kind: str, params: dict) -> None:
    m = make(kind, params)
    x, _ = inputs()
    out, w = m(x, causal=True, need_weights=True)
    assert w is not None
    assert torch.all(w.triu(diagonal=1) == 0)
    assert torch.all(w[..., torch.ones(L, L, dtype=torch.bool).tril()] > 0)
    for i in (0, 4, L - 2):
        x2 = x.clone()
        x2[:, i + 1 :] = torch.randn_like(x2[:, i + 1 :]) * 3
        for need in (False, True):
            out2, _ = m(x2, causal=True, need_weights=need)
            torch.testing.assert_close(out2[:, : i + 1], out[:, : i + 1], atol=1e-6, rtol=1e-6)
            assert not torch.allclose(out2[:, i + 1 :], out[:, i + 1 :])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("kind", "params"), CONFIGS, ids=IDS)
def test_padded_contents_do_not_leak(kind: str, params: dict, causal: bool) -> None:
    m = make(kind, params)
    x, pad = inputs()
    x2 = x.clone()
    x2[pad] = torch.randn_like(x2[pad]) * 5
    for need in (False, True):
        out, _ = m(x, key_padding_mask=pad, causal=causal, need_weights=need)
        out2, _ = m(x2, key_padding_mask=pad, causal=causal, need_weights=need)
        real = ~pad
        torch.testing.assert_close(out2[real], out[real], atol=1e-6, rtol=1e-6)
        if not causal:  # without the mask the padded contents do leak: the test can fail
            leak, _ = m(x2, causal=causal, need_weights=need)
            assert not torch.allclose(leak[real], out[real])


@pytest.mark.parametrize(("kind", "params"), CONFIGS, ids=IDS)
def test_gradients_reach_every_parameter(kind: str, params: dict) -> None:
    m = make(kind, params)
    x, pad = inputs()
    out, _ = m(x, key_padding_mask=pad, causal=True)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        if name == "k_proj.bias" and _ignores_key_bias(m, x, pad):
            # Scores linear in k (dot products): q . b_k is the same for every key of a row,
            # so the softmax cancels it and its gradient is 0.
            assert p.grad.abs().max() < 1e-5
        else:
            assert p.grad.abs().sum() > 0, name


@torch.no_grad()
def _ignores_key_bias(m: torch.nn.Module, x: torch.Tensor, pad: torch.Tensor) -> bool:
    """Whether the module's output stays the same when the key bias moves."""
    before, _ = m(x, key_padding_mask=pad, causal=True)
    m.k_proj.bias += 1.0
    after, _ = m(x, key_padding_mask=pad, causal=True)
    m.k_proj.bias -= 1.0
    return torch.allclose(before, after, atol=1e-5)


@pytest.mark.parametrize(
    ("pad_on", "causal"), [(False, False), (False, True), (True, False), (True, True)]
)
@pytest.mark.parametrize(("kind", "params"), CONFIGS, ids=IDS)
def test_need_weights_does_not_change_output(
    kind: str, params: dict, pad_on: bool, causal: bool
) -> None:
    m = make(kind, params)
    x, pad = inputs()
    mask = pad if pad_on else None
    out_w, _ = m(x, key_padding_mask=mask, causal=causal, need_weights=True)
    out, _ = m(x, key_padding_mask=mask, causal=causal, need_weights=False)
    torch.testing.assert_close(out, out_w, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("kind", "params"), CONFIGS, ids=IDS)
def test_fully_masked_row_is_finite_and_zero(kind: str, params: dict) -> None:
    m = make(kind, params)
    x, pad = inputs()
    pad[0] = True  # every key of sequence 0 is padding
    out_w, w = m(x, key_padding_mask=pad, causal=True, need_weights=True)
    out, _ = m(x, key_padding_mask=pad, causal=True)
    assert w is not None
    assert torch.isfinite(out).all() and torch.isfinite(out_w).all()
    assert torch.all(w[0] == 0)
    torch.testing.assert_close(out, out_w, atol=1e-5, rtol=1e-5)
    # No key to attend to: the attended vector is 0, so the output is out_proj's bias.
    torch.testing.assert_close(out[0], m.out_proj.bias.expand(L, D_MODEL).detach())


# --------------------------------------------------------------------------- dot-product kinds


def test_scaled_dot_equals_dot_with_scaled_queries() -> None:
    d_k = 32
    scaled = make("scaled_dot", {}, d_k=d_k)
    dot = make("dot", {}, seed=5, d_k=d_k)
    dot.load_state_dict(scaled.state_dict())
    x, pad = inputs()
    out_before, _ = dot(x, key_padding_mask=pad)
    with torch.no_grad():
        dot.q_proj.weight /= math.sqrt(d_k)
        dot.q_proj.bias /= math.sqrt(d_k)
    for causal in (False, True):
        a, wa = scaled(x, key_padding_mask=pad, causal=causal, need_weights=True)
        b, wb = dot(x, key_padding_mask=pad, causal=causal, need_weights=True)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(wa, wb, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out_before, scaled(x, key_padding_mask=pad)[0], atol=1e-3)


@pytest.mark.parametrize("need_weights", [False, True])
def test_multihead_one_head_matches_scaled_dot(need_weights: bool) -> None:
    mh = make("multihead", {"n_heads": 1})
    sd = make("scaled_dot", {}, seed=7)
    sd.load_state_dict(mh.state_dict())
    x, pad = inputs()
    for mask, causal in [(None, False), (None, True), (pad, False), (pad, True)]:
        a, wa = mh(x, key_padding_mask=mask, causal=causal, need_weights=need_weights)
        b, wb = sd(x, key_padding_mask=mask, causal=causal, need_weights=need_weights)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        if need_weights:
            torch.testing.assert_close(wa, wb, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("n_heads", [1, 2, 4])
@pytest.mark.parametrize(
    ("pad_on", "causal"), [(False, False), (False, True), (True, False), (True, True)]
)
def test_multihead_sdpa_matches_explicit_path(n_heads: int, pad_on: bool, causal: bool) -> None:
    m = make("multihead", {"n_heads": n_heads}, d_k=12)
    x, pad = inputs()
    x.requires_grad_(True)
    mask = pad if pad_on else None
    fast, _ = m(x, key_padding_mask=mask, causal=causal)
    (g_fast,) = torch.autograd.grad(fast.square().sum(), x)
    slow, _ = m(x, key_padding_mask=mask, causal=causal, need_weights=True)
    (g_slow,) = torch.autograd.grad(slow.square().sum(), x)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_fast, g_slow, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- additive


def _additive_inputs(
    b: int, h: int, length: int, d: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    qa = torch.randn(b, h, length, d, generator=g, dtype=dtype, requires_grad=True)
    ka = torch.randn(b, h, length, d, generator=g, dtype=dtype, requires_grad=True)
    v = torch.randn(h, d, generator=g, dtype=dtype, requires_grad=True)
    return qa, ka, v


@pytest.mark.parametrize("chunk_size", [0, 1, 3, 7, 100])
def test_additive_chunked_equals_naive(chunk_size: int) -> None:
    qa, ka, v = _additive_inputs(2, 3, 7, 5)
    grad_out = torch.randn(2, 3, 7, 7)
    ref = additive_scores_naive(qa, ka, v)
    ref_grads = torch.autograd.grad(ref, (qa, ka, v), grad_out)
    got = additive_scores(qa, ka, v, chunk_size)
    got_grads = torch.autograd.grad(got, (qa, ka, v), grad_out)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(got_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 2, 4])
def test_additive_gradcheck_float64(chunk_size: int) -> None:
    qa, ka, v = _additive_inputs(2, 2, 4, 3, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda a, b, c: additive_scores(a, b, c, chunk_size), (qa, ka, v)
    )


@pytest.mark.parametrize("chunk_size", [1, 3, L])
def test_additive_module_chunk_sizes_agree(chunk_size: int) -> None:
    ref = make("additive", {"n_heads": 2, "chunk_size": 0})
    m = make("additive", {"n_heads": 2, "chunk_size": chunk_size})
    x, pad = inputs()
    a, _ = ref(x, key_padding_mask=pad, causal=True)
    b, _ = m(x, key_padding_mask=pad, causal=True)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    a.sum().backward()
    b.sum().backward()
    for (name, p), q in zip(ref.named_parameters(), m.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-5, msg=name)


def test_auto_chunk_rows_arithmetic() -> None:
    # Whole tensor within the budget: one chunk of all L rows.
    assert _auto_chunk_rows(2, 1, 8, 4, budget=2 * 8 * 8 * 4) == 8
    assert _auto_chunk_rows(1, 1, 8, 4, budget=10**9) == 8
    # Over budget: several chunks, each within it.
    rows = _auto_chunk_rows(2, 1, 8, 4, budget=2 * 8 * 8 * 4 - 1)
    assert rows == 7
    assert _auto_chunk_rows(2, 3, 100, 16, budget=2 * 3 * 100 * 16 * 10) == 10
    # A single row over budget still makes progress, one row at a time.
    assert _auto_chunk_rows(4, 4, 64, 64, budget=100) == 1
    # The default budget (4 MiB of float32) at the benchmark size (B=32, h=4, L=64, d=16):
    # blocks of 8 query rows, 8 chunks.
    assert ADDITIVE_CHUNK_BUDGET == 2**20
    assert _auto_chunk_rows(32, 4, 64, 16) == 8


def _saved(fn: Callable[[], object]) -> list[int]:
    """Sizes (elements) of every tensor autograd saves while `fn` runs."""
    sizes: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sizes


def test_additive_saves_at_most_the_keep_budget_for_backward() -> None:
    """Small cases keep their blocks (at most ADDITIVE_KEEP_BUDGET elements in all);
    large ones save only O(B h L d) inputs: never a whole 5-D tensor above the budget."""
    b, h, length, d = 2, 2, 24, 8
    full = b * h * length * length * d
    assert full <= ADDITIVE_KEEP_BUDGET
    qa, ka, v = _additive_inputs(b, h, length, d)
    assert max(_saved(lambda: additive_scores_naive(qa, ka, v))) >= full  # the check can fail
    kept = _saved(lambda: additive_scores(qa, ka, v, chunk_size=4))
    assert sum(kept) == 2 * b * h * length * d + h * d + full  # qa, ka, v and 6 blocks
    assert max(kept) == full // 6

    b, h, length, d = 4, 2, 256, 16  # 8.4M elements in all, over the keep budget
    assert b * h * length * length * d > ADDITIVE_KEEP_BUDGET
    qa, ka, v = _additive_inputs(b, h, length, d)
    assert max(_saved(lambda: additive_scores(qa, ka, v))) <= b * h * length * d
    # The whole module keeps nothing 5-D either, beyond the budget.
    m = make("additive", {"n_heads": h, "d_attn": d})
    x, pad = inputs()
    assert sum(_saved(lambda: m(x, key_padding_mask=pad, causal=True))) < (
        ADDITIVE_KEEP_BUDGET + B * h * L * L * 8
    )


def test_additive_auto_chunks_above_budget_match_naive() -> None:
    # 2*2*160*160*64 = 6.5M elements > 2**20, so automatic chunking makes several chunks.
    b, h, length, d = 2, 2, 160, 64
    assert _auto_chunk_rows(b, h, length, d) < length
    qa, ka, v = _additive_inputs(b, h, length, d, dtype=torch.float64)
    grad_out = torch.randn(b, h, length, length, dtype=torch.float64)
    ref = additive_scores_naive(qa, ka, v)  # float64 reference
    ref_grads = torch.autograd.grad(ref, (qa, ka, v), grad_out)
    ins = [t.detach().float().requires_grad_(True) for t in (qa, ka, v)]
    got = additive_scores(*ins)
    got_grads = torch.autograd.grad(got, ins, grad_out.float())
    # Float32 against float64, relative to the norm, to the 1e-5: dv sums 51,200
    # terms per element in float32 (measured: 1.4e-6).
    for a, r in zip((got, *got_grads), (ref, *ref_grads), strict=True):
        assert (a.double() - r).norm() <= 1e-5 * r.norm()
