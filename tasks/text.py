"""Text tasks: character-level language modelling (char_lm) and text classification (text_cls).

(About 380 lines: the two tasks share the splitting and tokenizing helpers below.)

char_lm: the corpus (see tasks.corpus) is split into train/val/test text, about 90/5/5 of
its characters, with no 64-character string in two splits (`split_corpus`):
- a corpus of at least MIN_DOCUMENTS documents (pydoc_data's 79 topics, a folder of 20 or
  more files) is split by document, from a fixed shuffle;
- otherwise (one file, a smaller folder) the text is cut at 90% and 95%, each cut moved back
  to a paragraph start (or a line start) when one is near;
- then repeated text is removed: validation loses the paragraphs that share a 64-character
  window with test, and training those that share one with validation or test
  (tasks.dedup). On pydoc_data training keeps 396,097 of its 418,687 characters, validation
  21,057 of 23,038, test all 23,245; no 64-character window of test occurs in training.
Training windows start at random offsets in the train text (from the run seed); val/test
windows are non-overlapping, evenly spread over their text, at most 200 each. The input is
c_0..c_{L-1}, the targets c_1..c_L, all scored; bpc is bits per character, and the chance
level is the add-one-smoothed unigram bpc of the training characters on the test text.

text_cls: labelled texts are split by a stratified shuffle with a fixed seed (60/20/20 for
stdlib_docs, 80/10/10 for other sources, or the source's own test split plus 90/10
train/val for Hugging Face datasets); the run seed only reorders the training split. Texts
are tokenized (vocabulary from the training split), truncated and right-padded with PAD to
max_len. The chance level is the test accuracy of the training split's most common class.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import AfterValidator, Field, StrictInt, StrictStr
from pydantic_core import PydanticCustomError

from tasks.base import Split, Task, TaskData, TaskInputError, majority_accuracy
from tasks.corpus import (
    PYDOC_CORPUS,
    STDLIB_DOCS,
    TABLE_SUFFIXES,
    Labelled,
    read_documents,
    read_labelled,
)
from tasks.dedup import remove_shared
from tasks.metrics import ACCURACY, BITS_PER_CHARACTER
from tasks.params import MAX_COUNT, Count, TaskParams, Width
from tasks.synthetic import N_TRAIN, generator, task_params
from tasks.tokenizers import LEVELS, PAD, UNK, Tokenizer, build_tokenizer

MAX_EVAL_WINDOWS = 200
SPLIT_SEED = 0  # fixed: text_cls val/test never depend on the run seed
MAX_CHARS = 2**12  # a generous bound on a corpus's distinct characters (memory check only)

# ---- parameters ----

Text = Annotated[StrictStr, Field(min_length=1)]


def _existing_corpus(corpus: str) -> str:
    if corpus != PYDOC_CORPUS and not Path(corpus).expanduser().exists():
        raise PydanticCustomError(
            "no_such_path",
            f"no such file or folder (char_lm reads a text file, a folder or {PYDOC_CORPUS!r})",
        )
    return corpus


def _existing_table(source: str) -> str:
    path = Path(source).expanduser()
    if path.suffix.lower() in TABLE_SUFFIXES and not path.is_file():
        raise PydanticCustomError("no_such_path", "no such file")
    return source


class CharLmParams(TaskParams):
    corpus: Annotated[Text, AfterValidator(_existing_corpus)] = Field(
        PYDOC_CORPUS, description=f"a UTF-8 text file, a folder of them, or {PYDOC_CORPUS!r}"
    )
    seq_len: Width = Field(128, description="characters per training window")
    n_train: Count = N_TRAIN

    def size_bounds(self) -> tuple[int, int, int]:
        return self.seq_len, MAX_CHARS, self.n_train


class TextClsParams(TaskParams):
    source: Annotated[Text, AfterValidator(_existing_table)] = Field(
        STDLIB_DOCS,
        description=f"{STDLIB_DOCS!r}, a .csv/.jsonl/.json/.parquet file or a Hugging Face "
        "dataset name",
    )
    text_column: Text = Field("text", description="column holding the texts")
    label_column: Text = Field("label", description="column holding the labels")
    tokenizer: Literal[LEVELS] = Field("word", description="tokens: characters or words")
    max_len: Width = Field(128, description="tokens kept per text (truncated, then padded)")
    max_vocab: Annotated[StrictInt, Field(ge=3, le=MAX_COUNT)] = Field(
        5000, description="vocabulary size, PAD and UNK included"
    )
    min_freq: Count = Field(2, description="training-split count a token needs to be kept")

    def size_bounds(self) -> tuple[int, int, int]:
        return self.max_len, self.max_vocab, 0  # the number of texts needs the data


# ---- char_lm ----

HELD_OUT = (0.05, 0.05)  # shares of the corpus's characters for validation and test
MIN_DOCUMENTS = 20  # a folder with fewer files is cut like a single text
MAX_SHIFT = 2000  # how far back a cut may move to start at a paragraph or line


@dataclass(frozen=True)
class TextSplits:
    train: str
    val: str
    test: str


def assign_documents(sizes: Sequence[int]) -> list[int]:
    """Split of each document (0 train, 1 val, 2 test): in a fixed shuffled order, a document
    goes to the held-out split with the most room left (of its share of the characters) that
    it fits in, else to train."""
    total = sum(sizes)
    room = [share * total for share in HELD_OUT]
    order = list(range(len(sizes)))
    random.Random(SPLIT_SEED).shuffle(order)
    split = [0] * len(sizes)
    for i in order:
        fits = [k for k in range(len(room)) if sizes[i] <= room[k]]
        if fits:
            held_out = max(fits, key=lambda k: room[k])
            split[i], room[held_out] = held_out + 1, room[held_out] - sizes[i]
    return split


def boundary(text: str, cut: int, low: int) -> int:
    """`cut` moved back to the nearest paragraph start, or else line start, not below `low`
    and at most MAX_SHIFT characters or half a held-out share back."""
    low = max(low, cut - min(MAX_SHIFT, int(min(HELD_OUT) * len(text) / 2)))
    for separator in ("\n\n", "\n"):
        found = text.rfind(separator, low, cut)
        if found >= 0:
            return found + len(separator)
    return cut


@lru_cache(maxsize=4)
def split_corpus(documents: tuple[str, ...]) -> TextSplits:
    """Train/val/test text with no 64-character window shared between any two of them.

    MIN_DOCUMENTS or more documents are split by document (`assign_documents`), each split
    keeping corpus order; fewer (or documents too large for a held-out share) are joined and
    cut at 90% and 95% of the characters, moved back to a paragraph (or line) start. Then
    validation gives way to test and training to both (`tasks.dedup.remove_shared`). Nothing
    here depends on the run seed.
    """
    split = assign_documents([len(d) for d in documents])
    if len(documents) >= MIN_DOCUMENTS and {1, 2} <= set(split):
        train, val, test = ("".join(d for d, s in zip(documents, split, strict=True) if s == k)
                            for k in range(3))  # fmt: skip
    else:
        text = "".join(documents)
        n = len(text)
        val_start = boundary(text, int((1 - sum(HELD_OUT)) * n), 0)
        test_start = boundary(text, int((1 - HELD_OUT[1]) * n), val_start + 1)
        train, val, test = text[:val_start], text[val_start:test_start], text[test_start:]
    val = remove_shared(val, test)
    return TextSplits(train=remove_shared(train, val + "\0" + test), val=val, test=test)


@lru_cache(maxsize=4)
def encode_splits(splits: TextSplits) -> tuple[Tokenizer, dict[str, torch.Tensor]]:
    """Character tokenizer from the training text, and each split's text as ids."""
    tokenizer = build_tokenizer([splits.train], "char")
    ids = {
        name: torch.tensor(tokenizer.encode(getattr(splits, name)), dtype=torch.long)
        for name in ("train", "val", "test")
    }
    return tokenizer, ids


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
    p = task_params(CharLmParams, params)
    corpus, seq_len, n_train = p.corpus, p.seq_len, p.n_train
    documents = read_documents(corpus)
    tokenizer, regions = encode_splits(split_corpus(documents))
    for name, region in regions.items():
        if len(region) < seq_len + 1:
            n_chars = sum(len(d) for d in documents)
            raise TaskInputError(
                f"task.corpus={corpus!r}: too short for task.seq_len={seq_len} "
                f"({n_chars} characters; the {name} split has {len(region)}, repeated text "
                f"removed, and needs {seq_len + 1}, about {20 * (seq_len + 1)} in all)"
            )
    train, val, test = regions["train"], regions["val"], regions["test"]
    train_starts = torch.randint(
        len(train) - seq_len, (n_train,), generator=generator("train", seed)
    )
    bpc = unigram_bpc(train, test, len(tokenizer))
    return TaskData(
        train=windows(train, train_starts, seq_len),
        val=windows(val, eval_starts(len(val), seq_len), seq_len),
        test=windows(test, eval_starts(len(test), seq_len), seq_len),
        vocab_size=len(tokenizer),
        n_outputs=len(tokenizer),
        info={
            "chance": bpc,
            "unigram_bpc": bpc,
            "vocab_size": len(tokenizer),
            "corpus_chars": sum(len(d) for d in documents),
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
    source: str, data: Labelled, own_test: Labelled | None
) -> tuple[Labelled, Labelled, Labelled]:
    """Stratified train/val/test: 60/20/20 for stdlib_docs (so that validation and test hold
    over 1,000 documents each), 80/10/10 for other sources, or the source's own test split."""
    if own_test is not None:
        train, val, _ = stratified_split(data.labels, 0.1, 0.0)
        return subset(data, train), subset(data, val), own_test
    held_out = 0.2 if source == STDLIB_DOCS else 0.1
    train, val, test = stratified_split(data.labels, held_out, held_out)
    return subset(data, train), subset(data, val), subset(data, test)


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


@lru_cache(maxsize=4)
def encode_labelled(
    source: str,
    label_column: str,
    data: Labelled,
    own_test: Labelled | None,
    level: str,
    max_len: int,
    max_vocab: int,
    min_freq: int,
) -> tuple[Tokenizer, list[str], tuple[Split, Split, Split]]:
    """The seed-independent part of text_cls: classes, splits, tokenizer and encoded splits
    (cached: every cell of a task shares it)."""
    classes = sorted(set(data.labels) | set(own_test.labels if own_test else ()))
    if len(classes) < 2:
        found = repr(classes[0]) if classes else "none"
        raise TaskInputError(
            f"task.label_column={label_column!r}: {source!r} has one distinct label ({found}); "
            "classification needs at least 2"
        )
    parts = split_labelled(source, data, own_test)
    for name, part in zip(("train", "val", "test"), parts, strict=True):
        if not len(part):
            raise TaskInputError(
                f"task.source={source!r}: {len(data)} labelled rows leave the {name} split empty"
            )
    tokenizer = build_tokenizer(parts[0].texts, level, max_vocab=max_vocab, min_freq=min_freq)
    train, val, test = (classification_split(tokenizer, p, classes, max_len) for p in parts)
    return tokenizer, classes, (train, val, test)


def build_text_cls(params: Mapping[str, Any], seed: int) -> TaskData:
    p = task_params(TextClsParams, params)
    data, own_test = read_labelled(p.source, p.text_column, p.label_column)
    tokenizer, classes, splits = encode_labelled(
        p.source, p.label_column, data, own_test, p.tokenizer, p.max_len, p.max_vocab, p.min_freq
    )
    train = splits[0]
    order = torch.randperm(len(train), generator=generator("train", seed))
    chance = majority_accuracy(train, splits[2])
    return TaskData(
        train=Split(x=train.x[order], y=train.y[order], padding=train.padding[order]),
        val=splits[1],
        test=splits[2],
        vocab_size=len(tokenizer),
        n_outputs=len(classes),
        info={
            "n_classes": len(classes),
            "classes": ",".join(classes),
            "vocab_size": len(tokenizer),
            "chance": chance,
            "majority_acc": chance,
        },
        itos=list(tokenizer.itos),
    )


TASK_ENTRIES: tuple[Task, ...] = (  # found by tasks/__init__.py
    Task(
        name="char_lm",
        kind="token",
        metric=BITS_PER_CHARACTER,
        target=2.5,
        causal=True,
        default_steps=2000,
        params=CharLmParams,
        build=build_char_lm,
        description="character-level language modelling, bits per character (default: pydoc text)",
    ),
    Task(
        name="text_cls",
        kind="classification",
        metric=ACCURACY,
        target=0.8,
        causal=False,
        default_steps=500,
        params=TextClsParams,
        build=build_text_cls,
        description="classify texts (default: stdlib docstrings by package; CSV/JSONL/Parquet/HF)",
    ),
)
