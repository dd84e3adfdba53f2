"""Text tasks: character-level language modelling (char_lm) and text classification (text_cls).

char_lm: the corpus (see tasks.corpus) is split contiguously 90/5/5 into train/val/test
regions. Training windows start at random offsets in the train region (from the run seed);
val/test windows are non-overlapping, evenly spread over their regions, at most 200 each.
The input is c_0..c_{L-1}, the targets c_1..c_L, all scored; bpc is bits per character.

text_cls: labelled texts are split by a stratified shuffle with a fixed seed (80/10/10, or
the source's own test split plus 90/10 train/val for Hugging Face datasets); the run seed
only reorders the training split. Texts are tokenized (vocabulary from the training split),
truncated and right-padded with PAD to max_len.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import torch

from tasks.base import Split, Task, TaskData, TaskInputError
from tasks.corpus import Labelled, read_corpus, read_labelled
from tasks.synthetic import check_int, generator
from tasks.tokenizers import LEVELS, PAD, UNK, Tokenizer, build_tokenizer

MAX_EVAL_WINDOWS = 200
SPLIT_SEED = 0  # fixed: text_cls val/test never depend on the run seed


def check_str(params: Mapping[str, Any], name: str) -> str:
    value = params[name]
    if not isinstance(value, str) or not value:
        raise TaskInputError(f"task.{name}={value!r}: must be a non-empty string")
    return value


# ---- char_lm ----


@lru_cache(maxsize=4)
def encode_corpus(text: str) -> tuple[Tokenizer, torch.Tensor, int, int]:
    """Character tokenizer from the train region, the encoded text and the region bounds."""
    train_end, val_end = int(0.9 * len(text)), int(0.95 * len(text))
    tokenizer = build_tokenizer([text[:train_end]], "char")
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    return tokenizer, ids, train_end, val_end


def unigram_bpc(train: torch.Tensor, test: torch.Tensor, vocab_size: int) -> float:
    """Cross-entropy (bits/char) on `test` of train's add-one-smoothed character frequencies."""
    counts = torch.bincount(train, minlength=vocab_size)[1:].double() + 1  # every id but PAD
    log_probs = (counts / counts.sum()).log2()
    return -log_probs[test - 1].mean().item()


def windows(ids: torch.Tensor, starts: torch.Tensor, seq_len: int) -> Split:
    """Windows of seq_len + 1 characters at `starts`: inputs and next-character targets."""
    chunk = ids[starts[:, None] + torch.arange(seq_len + 1)]
    x, y = chunk[:, :-1], chunk[:, 1:]
    return Split(x=x, y=y, score_mask=torch.ones_like(x, dtype=torch.bool))


def eval_starts(n_chars: int, seq_len: int) -> torch.Tensor:
    """Starts of up to MAX_EVAL_WINDOWS non-overlapping windows, spread over the region."""
    n_windows = (n_chars - 1) // seq_len
    picked = torch.linspace(0, n_windows - 1, min(n_windows, MAX_EVAL_WINDOWS)).round().long()
    return picked * seq_len


def build_char_lm(params: Mapping[str, Any], seed: int) -> TaskData:
    corpus = check_str(params, "corpus")
    seq_len = check_int(params, "seq_len", 1)
    n_train = check_int(params, "n_train", 1)
    text = read_corpus(corpus)
    tokenizer, ids, train_end, val_end = encode_corpus(text)
    regions = {"train": ids[:train_end], "val": ids[train_end:val_end], "test": ids[val_end:]}
    for name, region in regions.items():
        if len(region) < seq_len + 1:
            raise TaskInputError(
                f"task.corpus={corpus!r}: too short for task.seq_len={seq_len} "
                f"({len(text)} characters; the {name} split needs {seq_len + 1}, "
                f"about {20 * (seq_len + 1)} in all)"
            )
    train, val, test = regions["train"], regions["val"], regions["test"]
    train_starts = torch.randint(
        len(train) - seq_len, (n_train,), generator=generator("train", seed)
    )
    return TaskData(
        train=windows(train, train_starts, seq_len),
        val=windows(val, eval_starts(len(val), seq_len), seq_len),
        test=windows(test, eval_starts(len(test), seq_len), seq_len),
        vocab_size=len(tokenizer),
        n_outputs=len(tokenizer),
        info={
            "unigram_bpc": unigram_bpc(train, test, len(tokenizer)),
            "vocab_size": len(tokenizer),
            "corpus_chars": len(text),
        },
        itos=list(tokenizer.itos),
    )


# ---- text_cls ----


def stratified_split(
    labels: Sequence[str], val_frac: float, test_frac: float
) -> tuple[list[int], list[int], list[int]]:
    """Row indices of train/val/test: each class shuffled (fixed seed) and cut by fraction."""
    rng = random.Random(SPLIT_SEED)
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    train, val, test = [], [], []
    for label in sorted(by_class):
        rows = by_class[label]
        rng.shuffle(rows)
        n_val, n_test = round(val_frac * len(rows)), round(test_frac * len(rows))
        val += rows[:n_val]
        test += rows[n_val : n_val + n_test]
        train += rows[n_val + n_test :]
    return sorted(train), sorted(val), sorted(test)


def subset(data: Labelled, rows: Sequence[int]) -> Labelled:
    return Labelled(tuple(data.texts[i] for i in rows), tuple(data.labels[i] for i in rows))


def split_labelled(
    data: Labelled, own_test: Labelled | None
) -> tuple[Labelled, Labelled, Labelled]:
    if own_test is None:
        train, val, test = stratified_split(data.labels, 0.1, 0.1)
        return subset(data, train), subset(data, val), subset(data, test)
    train, val, _ = stratified_split(data.labels, 0.1, 0.0)
    return subset(data, train), subset(data, val), own_test


def encode_texts(tokenizer: Tokenizer, texts: Sequence[str], max_len: int) -> torch.Tensor:
    """(N, max_len) ids, truncated and right-padded with PAD; an empty text becomes [UNK]."""
    rows = []
    for text in texts:
        ids = tokenizer.encode(text)[:max_len] or [UNK]
        rows.append(ids + [PAD] * (max_len - len(ids)))
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), max_len)


def classification_split(
    tokenizer: Tokenizer, data: Labelled, classes: list[str], max_len: int
) -> Split:
    x = encode_texts(tokenizer, data.texts, max_len)
    class_id = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([class_id[label] for label in data.labels], dtype=torch.long)
    return Split(x=x, y=y, padding=x == PAD)


def majority_acc(train: Labelled, test: Labelled) -> float:
    """Test accuracy of always answering the training split's most common class."""
    majority = min(Counter(train.labels).items(), key=lambda kv: (-kv[1], kv[0]))[0]
    return sum(label == majority for label in test.labels) / len(test)


def build_text_cls(params: Mapping[str, Any], seed: int) -> TaskData:
    source = check_str(params, "source")
    text_column = check_str(params, "text_column")
    label_column = check_str(params, "label_column")
    level = params["tokenizer"]
    if level not in LEVELS:
        raise TaskInputError(f"task.tokenizer={level!r}: must be one of: {', '.join(LEVELS)}")
    max_len = check_int(params, "max_len", 1)
    max_vocab = check_int(params, "max_vocab", 3)
    min_freq = check_int(params, "min_freq", 1)

    data, own_test = read_labelled(source, text_column, label_column)
    classes = sorted(set(data.labels) | set(own_test.labels if own_test else ()))
    if len(classes) < 2:
        found = repr(classes[0]) if classes else "none"
        raise TaskInputError(
            f"task.label_column={label_column!r}: {source!r} has one distinct label ({found}); "
            "classification needs at least 2"
        )
    parts = split_labelled(data, own_test)
    for name, part in zip(("train", "val", "test"), parts, strict=True):
        if not len(part):
            raise TaskInputError(
                f"task.source={source!r}: {len(data)} labelled rows leave the {name} split empty"
            )
    train, _, test = parts
    tokenizer = build_tokenizer(train.texts, level, max_vocab=max_vocab, min_freq=min_freq)
    splits = [classification_split(tokenizer, p, classes, max_len) for p in parts]
    order = torch.randperm(len(train), generator=generator("train", seed))
    train_split = Split(
        x=splits[0].x[order], y=splits[0].y[order], padding=splits[0].padding[order]
    )
    return TaskData(
        train=train_split,
        val=splits[1],
        test=splits[2],
        vocab_size=len(tokenizer),
        n_outputs=len(classes),
        info={
            "n_classes": len(classes),
            "classes": ",".join(classes),
            "vocab_size": len(tokenizer),
            "majority_acc": majority_acc(train, test),
        },
        itos=list(tokenizer.itos),
    )


TEXT_TASKS: tuple[Task, ...] = (
    Task(
        name="char_lm",
        kind="token",
        metric="bpc",
        target=2.5,
        causal=True,
        default_steps=2000,
        params={"corpus": "pydoc_data", "seq_len": 128, "n_train": 20000},
        build=build_char_lm,
        description="character-level language modelling, bits per character (default: pydoc text)",
    ),
    Task(
        name="text_cls",
        kind="classification",
        metric="acc",
        target=0.8,
        causal=False,
        default_steps=500,
        params={
            "source": "stdlib_docs",
            "text_column": "text",
            "label_column": "label",
            "tokenizer": "word",
            "max_len": 128,
            "max_vocab": 5000,
            "min_freq": 2,
        },
        build=build_text_cls,
        description="classify texts (default: stdlib docstrings by package; CSV/JSONL/Parquet/HF)",
    ),
)
