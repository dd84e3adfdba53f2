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
from typing import Annotated, Any

import torch
from pydantic import Field, StrictInt, model_validator

from tasks.base import Split, Task, TaskData, TaskInputError, majority_accuracy
from tasks.metrics import ACCURACY
from tasks.params import MAX_COUNT, Count, TaskParams, Width, invalid, validated

N_VAL = 1000
N_TEST = 1000


def generator(stream: str, seed: int) -> torch.Generator:
    """An independent generator per (stream, seed): "train" with any seed never meets val/test."""
    digest = hashlib.sha256(f"{stream}:{seed}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


# ---- parameters ----

Vocabulary = Annotated[StrictInt, Field(ge=2, le=MAX_COUNT)]
N_TRAIN = Field(20000, description="training examples, fresh samples from the run seed")


def at_most(name: str, value: int, bound_name: str, bound: int) -> None:
    """A task parameter that may not exceed another one."""
    if value > bound:
        raise invalid(name, f"must be <= task.{bound_name}={bound}")


class SequenceParams(TaskParams):
    """copy, reverse, sort: a random sequence, then SEP and one query slot per token."""

    length: Width = Field(10, description="tokens in the sequence (and query slots)")
    vocab_size: Vocabulary = Field(10, description="distinct data tokens")
    n_train: Count = N_TRAIN

    def size_bounds(self) -> tuple[int, int, int]:
        return 2 * self.length + 1, self.vocab_size + 2, self.n_train


class SelectiveCopyParams(TaskParams):
    length: Width = Field(32, description="positions of the noise region")
    n_data: Width = Field(8, description="data tokens scattered in the region (<= length)")
    vocab_size: Vocabulary = Field(10, description="distinct data tokens")
    n_train: Count = N_TRAIN

    @model_validator(mode="after")
    def _fits(self) -> SelectiveCopyParams:
        at_most("n_data", self.n_data, "length", self.length)
        return self

    def size_bounds(self) -> tuple[int, int, int]:
        return self.length + 1 + self.n_data, self.vocab_size + 3, self.n_train


class AssocRecallParams(TaskParams):
    n_pairs: Width = Field(8, description="key-value pairs per sequence (<= n_keys)")
    n_queries: Width = Field(8, description="keys asked back per sequence (<= n_pairs)")
    n_keys: Vocabulary = Field(32, description="distinct key tokens")
    n_values: Vocabulary = Field(32, description="distinct value tokens")
    n_train: Count = N_TRAIN

    @model_validator(mode="after")
    def _fits(self) -> AssocRecallParams:
        at_most("n_pairs", self.n_pairs, "n_keys", self.n_keys)
        at_most("n_queries", self.n_queries, "n_pairs", self.n_pairs)
        return self

    def size_bounds(self) -> tuple[int, int, int]:
        return 2 * (self.n_pairs + self.n_queries), self.n_keys + self.n_values, self.n_train


def task_params(model: type[TaskParams], params: Mapping[str, Any]) -> Any:
    """A builder's parameters, checked (builders may be called directly, not only by runs)."""
    return validated(model, params, "task", TaskInputError)


def random_subsets(n: int, size: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """(n, k) rows of k distinct values from range(size), in random order."""
    return torch.rand(n, size, generator=gen).argsort(dim=1)[:, :k]


Sampler = Callable[[int, torch.Generator], Split]


def make_data(
    sample: Sampler, n_train: int, seed: int, n_outputs: int, itos: list[str]
) -> TaskData:
    """`sample(n, gen) -> Split` applied to the train stream (run seed) and the fixed streams."""
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
    p = task_params(SequenceParams, params)
    length, vocab = p.length, p.vocab_size
    sep, query = vocab, vocab + 1

    def sample(n: int, gen: torch.Generator) -> Split:
        data = torch.randint(vocab, (n, length), generator=gen)
        return slot_split(data, transform(data), sep, query)

    return make_data(sample, p.n_train, seed, vocab, symbol_names(vocab, "SEP", "Q"))


def build_copy(params: Mapping[str, Any], seed: int) -> TaskData:
    return build_sequence_task(params, seed, lambda d: d.clone())


def build_reverse(params: Mapping[str, Any], seed: int) -> TaskData:
    return build_sequence_task(params, seed, lambda d: d.flip(1))


def build_sort(params: Mapping[str, Any], seed: int) -> TaskData:
    return build_sequence_task(params, seed, lambda d: d.sort(dim=1).values)


def build_selective_copy(params: Mapping[str, Any], seed: int) -> TaskData:
    """A region of NOISE with n_data data tokens at random positions; answer them in order."""
    p = task_params(SelectiveCopyParams, params)
    length, n_data, vocab = p.length, p.n_data, p.vocab_size
    noise, sep, query = vocab, vocab + 1, vocab + 2

    def sample(n: int, gen: torch.Generator) -> Split:
        positions = random_subsets(n, length, n_data, gen).sort(dim=1).values
        data = torch.randint(vocab, (n, n_data), generator=gen)
        region = torch.full((n, length), noise).scatter(1, positions, data)
        return slot_split(region, data, sep, query)

    return make_data(sample, p.n_train, seed, vocab, symbol_names(vocab, "NOISE", "SEP", "Q"))


# ---- multi-query associative recall (Zoology's MQAR), causal ----


def build_assoc_recall(params: Mapping[str, Any], seed: int) -> TaskData:
    """[k1 v1 ... kp vp  q1 a1 ... qm am]: predict a_j at the position of q_j.

    Keys are distinct within a sequence; values may repeat. Ids: keys 0..n_keys-1, values
    n_keys..n_keys+n_values-1. Targets are the value's token id, so n_outputs = vocab_size.
    """
    p = task_params(AssocRecallParams, params)
    n_pairs, n_queries, n_keys, n_values = p.n_pairs, p.n_queries, p.n_keys, p.n_values

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
    return make_data(sample, p.n_train, seed, n_keys + n_values, itos)


TASK_ENTRIES: tuple[Task, ...] = (  # found by tasks/__init__.py
    Task(
        name="copy",
        kind="token",
        metric=ACCURACY,
        target=0.99,
        causal=False,
        default_steps=1000,
        params=SequenceParams,
        build=build_copy,
        pure=True,
        description="copy a random sequence into query slots after SEP",
    ),
    Task(
        name="reverse",
        kind="token",
        metric=ACCURACY,
        target=0.95,
        causal=False,
        default_steps=1000,
        params=SequenceParams,
        build=build_reverse,
        pure=True,
        description="write a random sequence backwards into query slots after SEP",
    ),
    Task(
        name="sort",
        kind="token",
        metric=ACCURACY,
        target=0.9,
        causal=False,
        default_steps=1000,
        params=SequenceParams,
        build=build_sort,
        pure=True,
        description="write a random sequence sorted (with duplicates) into query slots after SEP",
    ),
    Task(
        name="assoc_recall",
        kind="token",
        metric=ACCURACY,
        target=0.95,
        causal=True,
        default_steps=3000,
        params=AssocRecallParams,
        build=build_assoc_recall,
        pure=True,
        description="multi-query associative recall (Zoology MQAR): recall the value of each key",
    ),
    Task(
        name="selective_copy",
        kind="token",
        metric=ACCURACY,
        target=0.95,
        causal=False,
        default_steps=2000,
        params=SelectiveCopyParams,
        build=build_selective_copy,
        pure=True,
        description="copy the data tokens scattered among noise, in order (Mamba selective copy)",
    ),
)
