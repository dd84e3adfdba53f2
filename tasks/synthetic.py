"""Synthetic sequence tasks: copy, reverse, sort, associative recall, selective copy.

Every task is per-token (`kind="token"`), scored by accuracy at the answer positions only.
The slot tasks (copy, reverse, sort, selective_copy) end with SEP and one query slot Q per
answer, so a non-causal model reads the whole input and answers at each slot.
assoc_recall is causal next-token prediction: the answer to a query key is predicted at
that key's position.

Samples are generated as whole tensors. The training split comes from a generator seeded
by the run seed; validation and test come from fixed generators, so every seed is
evaluated on the same held-out data.

Default sizes suit the harness's 2-layer, d_model 64 model (Adam, lr 1e-3, batch 64, CPU):
copy, reverse and sort reach their targets within a few hundred steps, selective_copy in about
1000, and assoc_recall after a sudden jump that comes between 500 and 2000+ steps depending on
the initialisation, hence its larger default_steps.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import torch

from tasks.base import Split, Task, TaskData, TaskInputError, majority_accuracy

N_VAL = 1000
N_TEST = 1000


def generator(stream: str, seed: int) -> torch.Generator:
    """An independent generator per (stream, seed): "train" with any seed never meets val/test."""
    digest = hashlib.sha256(f"{stream}:{seed}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def check_int(params: Mapping[str, Any], name: str, low: int) -> int:
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise TaskInputError(f"task.{name}={value!r}: must be an integer")
    if value < low:
        raise TaskInputError(f"task.{name}={value}: must be >= {low}")
    return value


def random_subsets(n: int, size: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """(n, k) rows of k distinct values from range(size), in random order."""
    return torch.rand(n, size, generator=gen).argsort(dim=1)[:, :k]


Sampler = Callable[[int, torch.Generator], Split]


def make_data(
    sample: Sampler, params: Mapping[str, Any], seed: int, n_outputs: int, itos: list[str]
) -> TaskData:
    """`sample(n, gen) -> Split` applied to the train stream (run seed) and the fixed streams."""
    n_train = check_int(params, "n_train", 1)
    train = sample(n_train, generator("train", seed))
    test = sample(N_TEST, generator("test", 0))
    return TaskData(
        train=train,
        val=sample(N_VAL, generator("val", 0)),
        test=test,
        vocab_size=len(itos),
        n_outputs=n_outputs,
        info={"chance": majority_accuracy(train, test)},
        itos=itos,
    )


# ---- slot tasks: [data..., SEP, Q x n_answers] -> answers at the Q slots ----


def slot_split(prefix: torch.Tensor, answers: torch.Tensor, sep: int, query: int) -> Split:
    """Inputs [prefix, SEP, Q...Q]; targets `answers` at the Q slots, scored only there."""
    n, k = answers.shape
    x = torch.cat([prefix, torch.full((n, 1), sep), torch.full((n, k), query)], dim=1)
    y = torch.zeros_like(x)
    y[:, -k:] = answers
    score_mask = torch.zeros_like(x, dtype=torch.bool)
    score_mask[:, -k:] = True
    return Split(x=x, y=y, score_mask=score_mask)


def symbol_names(vocab_size: int, *extra: str) -> list[str]:
    return [str(i) for i in range(vocab_size)] + list(extra)


def build_sequence_task(
    params: Mapping[str, Any], seed: int, transform: Callable[[torch.Tensor], torch.Tensor]
) -> TaskData:
    """copy / reverse / sort: `transform` maps the (n, length) data to the (n, length) answers."""
    length = check_int(params, "length", 1)
    vocab = check_int(params, "vocab_size", 2)
    sep, query = vocab, vocab + 1

    def sample(n: int, gen: torch.Generator) -> Split:
        data = torch.randint(vocab, (n, length), generator=gen)
        return slot_split(data, transform(data), sep, query)

    return make_data(sample, params, seed, vocab, symbol_names(vocab, "SEP", "Q"))


def build_copy(params: Mapping[str, Any], seed: int) -> TaskData:
    return build_sequence_task(params, seed, lambda d: d.clone())


def build_reverse(params: Mapping[str, Any], seed: int) -> TaskData:
    return build_sequence_task(params, seed, lambda d: d.flip(1))


def build_sort(params: Mapping[str, Any], seed: int) -> TaskData:
    return build_sequence_task(params, seed, lambda d: d.sort(dim=1).values)


def build_selective_copy(params: Mapping[str, Any], seed: int) -> TaskData:
    """A region of NOISE with n_data data tokens at random positions; answer them in order."""
    length = check_int(params, "length", 1)
    n_data = check_int(params, "n_data", 1)
    vocab = check_int(params, "vocab_size", 2)
    if n_data > length:
        raise TaskInputError(f"task.n_data={n_data}: must be <= task.length={length}")
    noise, sep, query = vocab, vocab + 1, vocab + 2

    def sample(n: int, gen: torch.Generator) -> Split:
        positions = random_subsets(n, length, n_data, gen).sort(dim=1).values
        data = torch.randint(vocab, (n, n_data), generator=gen)
        region = torch.full((n, length), noise).scatter(1, positions, data)
        return slot_split(region, data, sep, query)

    return make_data(sample, params, seed, vocab, symbol_names(vocab, "NOISE", "SEP", "Q"))


# ---- multi-query associative recall (Zoology's MQAR), causal ----


def build_assoc_recall(params: Mapping[str, Any], seed: int) -> TaskData:
    """[k1 v1 ... kp vp  q1 a1 ... qm am]: predict a_j at the position of q_j.

    Keys are distinct within a sequence; values may repeat. Ids: keys 0..n_keys-1, values
    n_keys..n_keys+n_values-1. Targets are the value's token id, so n_outputs = vocab_size.
    """
    n_pairs = check_int(params, "n_pairs", 1)
    n_queries = check_int(params, "n_queries", 1)
    n_keys = check_int(params, "n_keys", 2)
    n_values = check_int(params, "n_values", 2)
    if n_pairs > n_keys:
        raise TaskInputError(f"task.n_pairs={n_pairs}: must be <= task.n_keys={n_keys}")
    if n_queries > n_pairs:
        raise TaskInputError(f"task.n_queries={n_queries}: must be <= task.n_pairs={n_pairs}")

    def sample(n: int, gen: torch.Generator) -> Split:
        keys = random_subsets(n, n_keys, n_pairs, gen)
        values = n_keys + torch.randint(n_values, (n, n_pairs), generator=gen)
        asked = random_subsets(n, n_pairs, n_queries, gen)  # which pairs are queried
        queries, answers = keys.gather(1, asked), values.gather(1, asked)
        context = torch.stack([keys, values], dim=2).flatten(1)
        x = torch.cat([context, torch.stack([queries, answers], dim=2).flatten(1)], dim=1)
        query_positions = 2 * n_pairs + 2 * torch.arange(n_queries)
        y = torch.zeros_like(x)
        y[:, query_positions] = answers
        score_mask = torch.zeros_like(x, dtype=torch.bool)
        score_mask[:, query_positions] = True
        return Split(x=x, y=y, score_mask=score_mask)

    itos = [f"k{i}" for i in range(n_keys)] + [f"v{i}" for i in range(n_values)]
    return make_data(sample, params, seed, n_keys + n_values, itos)


SYNTHETIC_TASKS: tuple[Task, ...] = (
    Task(
        name="copy",
        kind="token",
        metric="acc",
        target=0.99,
        causal=False,
        default_steps=1000,
        params={"length": 10, "vocab_size": 10, "n_train": 20000},
        build=build_copy,
        description="copy a random sequence into query slots after SEP",
    ),
    Task(
        name="reverse",
        kind="token",
        metric="acc",
        target=0.95,
        causal=False,
        default_steps=1000,
        params={"length": 10, "vocab_size": 10, "n_train": 20000},
        build=build_reverse,
        description="write a random sequence backwards into query slots after SEP",
    ),
    Task(
        name="sort",
        kind="token",
        metric="acc",
        target=0.9,
        causal=False,
        default_steps=1000,
        params={"length": 10, "vocab_size": 10, "n_train": 20000},
        build=build_sort,
        description="write a random sequence sorted (with duplicates) into query slots after SEP",
    ),
    Task(
        name="assoc_recall",
        kind="token",
        metric="acc",
        target=0.95,
        causal=True,
        default_steps=3000,
        params={"n_pairs": 8, "n_queries": 8, "n_keys": 32, "n_values": 32, "n_train": 20000},
        build=build_assoc_recall,
        description="multi-query associative recall (Zoology MQAR): recall the value of each key",
    ),
    Task(
        name="selective_copy",
        kind="token",
        metric="acc",
        target=0.95,
        causal=False,
        default_steps=2000,
        params={"length": 32, "n_data": 8, "vocab_size": 10, "n_train": 20000},
        build=build_selective_copy,
        description="copy the data tokens scattered among noise, in order (Mamba selective copy)",
    ),
)
