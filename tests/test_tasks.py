"""Task data: conventions of tasks/base.py, determinism, per-task correctness, bad inputs."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch

from tasks import TASKS, Task, TaskData, TaskInputError, get_task
from tasks.cache import DataCache, data_bytes
from tasks.corpus import (
    STDLIB_CLASSES,
    disk_cached,
    read_corpus,
    read_documents,
    stdlib_docs,
    stdlib_files,
)
from tasks.synthetic import TASK_ENTRIES as SYNTHETIC_TASKS
from tasks.text import TextSplits, eval_starts, split_corpus
from tasks.tokenizers import PAD, UNK, build_tokenizer

ALL = sorted(TASKS)
SYNTHETIC = [task.name for task in SYNTHETIC_TASKS]


def build(name: str, seed: int = 0, **overrides: object) -> TaskData:
    task = get_task(name)
    return task.build({**task.params.defaults(), **overrides}, seed)


@functools.cache
def default(name: str, seed: int = 0) -> TaskData:
    """Default-parameter data, built once per (task, seed) for the whole test module."""
    return build(name, seed)


def splits(data: TaskData) -> dict:
    return {"train": data.train, "val": data.val, "test": data.test}


def assert_same(a: TaskData, b: TaskData) -> None:
    for name, split in splits(a).items():
        other = splits(b)[name]
        for field in ("x", "y", "score_mask", "padding"):
            left, right = getattr(split, field), getattr(other, field)
            assert (left is None) == (right is None), (name, field)
            if left is not None:
                assert torch.equal(left, right), (name, field)


# ---- every registered task ----


@pytest.mark.parametrize("name", ALL)
def test_size_bounds_cover_the_default_data(name: str) -> None:
    """The sizes a task's parameters promise (for the memory check made before any run) bound
    the data it builds."""
    task, data = TASKS[name], default(name)
    bounds = task.params().size_bounds()
    if bounds is None:
        return
    length, vocab, examples = bounds
    assert data.seq_len <= length and data.vocab_size <= vocab and data.n_outputs <= vocab
    assert len(data.train) <= examples or examples == 0


@pytest.mark.parametrize("name", ALL)
def test_declaration(name: str) -> None:
    task = TASKS[name]
    assert task.kind in ("token", "classification")
    metric = task.metric
    assert metric.name and metric.label and "/" not in metric.name
    assert task.higher_is_better == metric.higher_is_better
    lo, hi = metric.bounds
    assert lo < task.target < hi  # a target at a bound is reached only by a perfect model
    assert task.default_steps > 0 and task.description
    for key, value in task.params.defaults().items():
        assert type(value) in (int, float, str, bool), (key, value)


@pytest.mark.parametrize("name", ALL)
def test_shapes_dtypes_and_ranges(name: str) -> None:
    task, data = TASKS[name], default(name)
    width = data.train.x.shape[1]
    for split_name, split in splits(data).items():
        x, y = split.x, split.y
        assert x.dtype == torch.long and x.ndim == 2 and x.shape[1] == width, split_name
        assert len(split) > 0 and y.dtype == torch.long
        assert x.min() >= 0 and x.max() < data.vocab_size
        assert y.min() >= 0 and y.max() < data.n_outputs
        if task.kind == "token":
            assert y.shape == x.shape and split.score_mask is not None
            assert split.score_mask.dtype == torch.bool and split.score_mask.shape == x.shape
            assert split.score_mask.any(dim=1).all(), "every row has a scored position"
            assert (y[~split.score_mask] == 0).all()
        else:
            assert y.shape == (len(split),) and split.score_mask is None
        if split.padding is not None:  # sequences of different lengths, right-padded with 0
            assert split.padding.dtype == torch.bool and split.padding.shape == x.shape
            assert (x[split.padding] == 0).all()
    if data.itos is not None:
        assert len(data.itos) == data.vocab_size


def scored(split) -> list[int]:
    return (split.y if split.score_mask is None else split.y[split.score_mask]).tolist()


@pytest.mark.parametrize("name", ALL)
def test_chance_lies_in_the_metric_bounds_short_of_the_target(name: str) -> None:
    task, chance = TASKS[name], default(name).info["chance"]
    lo, hi = task.metric.bounds
    assert lo <= chance <= hi
    assert not task.metric.reached(chance, task.target)


@pytest.mark.parametrize("name", [n for n in ALL if TASKS[n].metric.name == "acc"])
def test_chance_is_the_best_input_blind_predictor(name: str) -> None:
    """chance = test accuracy of the constant answer with most training hits (ties: smallest)."""
    data = default(name)
    train_counts, test = Counter(scored(data.train)), scored(data.test)
    best = max(range(data.n_outputs), key=lambda answer: (train_counts[answer], -answer))
    brute_force = sum(target == best for target in test) / len(test)
    assert data.info["chance"] == pytest.approx(brute_force, abs=1e-12)
    assert 0 <= data.info["chance"] < TASKS[name].target


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_split_sizes(name: str) -> None:
    data = default(name)
    n_train = TASKS[name].params.defaults()["n_train"]
    assert (len(data.train), len(data.val), len(data.test)) == (n_train, 1000, 1000)
    assert len(build(name, n_train=50).train) == 50


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_data(name: str) -> None:
    assert_same(default(name), build(name, seed=0))


DIGEST = """
import hashlib
from tasks import get_task

def digest(name):
    task = get_task(name)
    data = task.build(task.params.defaults(), 3)
    digest = hashlib.sha256()
    for split in (data.train, data.val, data.test):
        digest.update(split.x.numpy().tobytes() + split.y.numpy().tobytes())
    return f"{name} {digest.hexdigest()} {sorted(data.info.items())}\\n"
"""


def test_text_tasks_identical_across_processes(tmp_path: Path) -> None:
    """In-process caches hide nondeterminism (hash order): build in a fresh interpreter with
    another hash seed, extracting the docstrings into an empty disk cache, and compare with
    this process (whose docstrings may come from the user's disk cache)."""
    script = DIGEST + "print(digest('char_lm') + digest('text_cls'), end='')"
    other_seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    env = {**os.environ, "PYTHONHASHSEED": other_seed, "XDG_CACHE_HOME": str(tmp_path)}
    run = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE)
    here: dict = {}
    exec(DIGEST, here)
    expected = here["digest"]("char_lm") + here["digest"]("text_cls")
    assert run.communicate()[0].decode() == expected and run.returncode == 0
    assert list((tmp_path / "attention-harness").glob("stdlib_docs-*.json"))


def test_disk_cache_round_trip_and_rebuild(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []

    def build() -> dict:
        calls.append(1)
        return {"texts": ["a", "b"], "labels": ["x", "y"]}

    assert disk_cached("t", ["key", 1], build) == build() and len(calls) == 2
    assert disk_cached("t", ["key", 1], build) == {"texts": ["a", "b"], "labels": ["x", "y"]}
    assert len(calls) == 2, "the second call reads the file"
    (path,) = (tmp_path / "attention-harness").glob("t-*.json")
    path.write_text("{not json", encoding="utf-8")
    assert disk_cached("t", ["key", 1], build)["labels"] == ["x", "y"] and len(calls) == 3
    disk_cached("t", ["other key"], build)
    assert len(calls) == 4 and len(list(path.parent.glob("t-*.json"))) == 2
    monkeypatch.setenv("XDG_CACHE_HOME", str(path))  # a file, so no folder can be made there
    assert disk_cached("t", ["key", 2], build)["texts"] == ["a", "b"] and len(calls) == 5


@pytest.mark.parametrize("name", ALL)
def test_seed_changes_train_only(name: str) -> None:
    a, b = default(name, 0), default(name, 1)
    assert not torch.equal(a.train.x, b.train.x)
    for split in ("val", "test"):
        assert torch.equal(getattr(a, split).x, getattr(b, split).x)
        assert torch.equal(getattr(a, split).y, getattr(b, split).y)


@pytest.mark.parametrize("name", SYNTHETIC)
def test_train_differs_from_held_out(name: str) -> None:
    data = default(name)
    assert not torch.equal(data.train.x[:1000], data.val.x)
    assert not torch.equal(data.val.x, data.test.x)


# ---- synthetic tasks ----


@pytest.mark.parametrize(
    ("name", "answer"),
    [
        ("copy", lambda d: d),
        ("reverse", lambda d: d.flip(1)),
        ("sort", lambda d: d.sort(dim=1).values),
    ],
)
def test_slot_task_targets(name: str, answer) -> None:
    n, vocab = 7, 5
    data = build(name, length=n, vocab_size=vocab, n_train=300)
    assert (data.vocab_size, data.n_outputs) == (vocab + 2, vocab)
    for split in splits(data).values():
        x, y, mask = split.x, split.y, split.score_mask
        assert x.shape[1] == 2 * n + 1
        assert (
            (x[:, :n] < vocab).all()
            and (x[:, n] == vocab).all()
            and (x[:, n + 1 :] == vocab + 1).all()
        )
        assert mask[:, n + 1 :].all() and not mask[:, : n + 1].any()
        assert torch.equal(y[:, n + 1 :], answer(x[:, :n]))


def test_sort_keeps_duplicates() -> None:
    x, y = default("sort").val.x, default("sort").val.y
    row = next(i for i in range(len(x)) if x[i, :10].unique().numel() < 10)
    assert sorted(x[row, :10].tolist()) == y[row, 11:].tolist()


def test_assoc_recall_answers_are_the_paired_values() -> None:
    p, q, n_keys, n_values = 6, 4, 10, 7
    data = build("assoc_recall", n_pairs=p, n_queries=q, n_keys=n_keys, n_values=n_values)
    assert data.vocab_size == n_keys + n_values and get_task("assoc_recall").causal
    for split in splits(data).values():
        x, y, mask = split.x, split.y, split.score_mask
        assert x.shape[1] == 2 * p + 2 * q
        assert int(mask.sum(dim=1).unique().item()) == q
        for row in range(0, len(x), 97):
            tokens, targets = x[row].tolist(), y[row].tolist()
            keys, values = tokens[0 : 2 * p : 2], tokens[1 : 2 * p : 2]
            assert len(set(keys)) == p and all(k < n_keys for k in keys)
            assert all(n_keys <= v < n_keys + n_values for v in values)
            pairs = dict(zip(keys, values, strict=True))
            queries = tokens[2 * p :: 2]
            assert len(set(queries)) == q and set(queries) <= set(keys)
            for j, key in enumerate(queries):
                pos = 2 * p + 2 * j
                assert mask[row, pos] and targets[pos] == pairs[key] == tokens[pos + 1]
            assert mask[row].nonzero().flatten().tolist() == list(range(2 * p, 2 * p + 2 * q, 2))


def test_selective_copy_targets_are_the_data_in_order() -> None:
    length, n_data, vocab = 20, 5, 6
    data = build("selective_copy", length=length, n_data=n_data, vocab_size=vocab)
    noise, sep = vocab, vocab + 1
    for split in splits(data).values():
        x, y, mask = split.x, split.y, split.score_mask
        assert x.shape[1] == length + 1 + n_data and (x[:, length] == sep).all()
        region = x[:, :length]
        assert ((region != noise).sum(dim=1) == n_data).all()
        assert torch.equal(region[region != noise].view(-1, n_data), y[:, -n_data:])
        assert mask[:, -n_data:].all() and not mask[:, :-n_data].any()
    positions = [tuple((r != noise).nonzero().flatten().tolist()) for r in data.val.x[:, :length]]
    assert len(set(positions)) > 100, "data positions vary between samples"


# ---- char_lm ----


def pydoc_splits() -> TextSplits:
    return split_corpus(read_documents("pydoc_data"))


def decode_window(data: TaskData, split, row: int) -> str:
    return "".join(data.itos[i] for i in [*split.x[row].tolist(), split.y[row, -1].item()])


def test_char_lm_default_corpus() -> None:
    data = default("char_lm")
    text, texts = read_corpus("pydoc_data"), pydoc_splits()
    assert data.info["corpus_chars"] == len(text) > 400_000
    assert 3 < data.info["unigram_bpc"] < 6 and data.info["chance"] == data.info["unigram_bpc"]
    assert data.info["vocab_size"] == data.vocab_size == data.n_outputs == len(data.itos)
    assert data.itos[:2] == ["<pad>", "<unk>"] and set(data.itos[2:]) == set(texts.train)
    for split in splits(data).values():
        assert torch.equal(split.y[:, :-1], split.x[:, 1:])
        assert split.score_mask.all() and split.x.shape[1] == 128
    for name, split in splits(data).items():
        row = len(split) // 2
        assert decode_window(data, split, row) in getattr(texts, name), name
    assert 150 < len(data.val) <= 200 and 150 < len(data.test) <= 200
    held_out = len(texts.val) + len(texts.test)
    assert 0.08 < held_out / len(text) < 0.11 and len(texts.train) > 0.8 * len(text)


def test_char_lm_eval_windows_are_non_overlapping_and_spread() -> None:
    seq_len = 16
    data = build("char_lm", seq_len=seq_len)
    val_text = pydoc_splits().val
    starts = eval_starts(len(val_text), seq_len)
    assert len(starts) == len(data.val) == 200
    assert (starts % seq_len == 0).all() and (starts.diff() >= seq_len).all()
    assert starts[0] == 0 and starts[-1] == ((len(val_text) - 1) // seq_len - 1) * seq_len
    for row, start in zip(data.val.x.tolist(), starts.tolist(), strict=True):
        assert "".join(data.itos[i] for i in row) == val_text[start : start + seq_len]


def shared_windows(text: str, reference: str, width: int = 64) -> float:
    """Fraction of text's `width`-character windows (every start, repeats counted) that occur
    anywhere in `reference`: plain strings, independent of the hashing in tasks.dedup."""
    seen = {reference[i : i + width] for i in range(len(reference) - width + 1)}
    starts = range(len(text) - width + 1)
    return sum(text[i : i + width] in seen for i in starts) / max(len(starts), 1)


def test_shared_windows_detects_overlap() -> None:
    """The measure below can fail: copied text and pydoc's old contiguous 90/5/5 cut show."""
    text = read_corpus("pydoc_data")
    assert shared_windows(text[1000:3000], text) == 1.0
    half = text[5000:6000] + "".join(chr(0x4E00 + i) for i in range(1000))
    assert shared_windows(half, text) == pytest.approx(937 / 1937)
    assert shared_windows("x" * 200, "y" * 200) == 0.0
    train, test = text[: int(0.9 * len(text))], text[int(0.95 * len(text)) :]
    assert shared_windows(test, train) > 0.05, "the issue's 7-17%: pydoc repeats passages"


def test_char_lm_default_splits_share_no_text() -> None:
    """Under 1% of held-out 64-character windows occur in training (measured: none)."""
    texts = pydoc_splits()
    assert shared_windows(texts.test, texts.train) < 0.01
    assert shared_windows(texts.val, texts.train) < 0.01
    assert shared_windows(texts.test, texts.val) < 0.01


def test_char_lm_folder_is_split_by_file_and_repeats_stay_held_out(tmp_path: Path) -> None:
    shared = "This paragraph is copied into every file, word for word, to be found.\n\n"
    for i in range(40):
        body = "".join(f"File {i} paragraph {j} says {i * j} things.\n\n" for j in range(30))
        (tmp_path / f"doc{i:02}.txt").write_text(body + shared, encoding="utf-8")
    documents = read_documents(str(tmp_path))
    assert len(documents) == 40
    texts = split_corpus(documents)
    in_test = [d for d in documents if d in texts.test]
    assert in_test and "".join(in_test) == texts.test, "test: whole files, in corpus order"
    homes = [
        [n for n in ("train", "val", "test") if d[:40] in getattr(texts, n)] for d in documents
    ]
    assert all(len(home) == 1 for home in homes), "every file in one split"
    assert [home[0] for home in homes].count("train") == 36
    assert shared in texts.test and shared not in texts.val + texts.train
    assert shared_windows(texts.test, texts.train) == 0.0
    assert shared_windows(texts.val, texts.train) == shared_windows(texts.test, texts.val) == 0.0
    kept = [d.removesuffix(shared) for d, h in zip(documents, homes, strict=True) if h == ["train"]]
    assert texts.train == "".join(kept), "train loses only the copy"
    data = build("char_lm", corpus=str(tmp_path), seq_len=32, n_train=10)
    assert decode_window(data, data.test, 0) in texts.test


def test_char_lm_folder_of_files_too_large_to_hold_out_is_cut(tmp_path: Path) -> None:
    """No file fits test's 5% share: the folder is cut like one text, not left without test."""
    for i in range(20):
        lines = 2 if i == 0 else 30
        text = "".join(f"file {i} line {j} of the folder.\n" for j in range(lines))
        (tmp_path / f"f{i:02}.txt").write_text(text, encoding="utf-8")
    documents = read_documents(str(tmp_path))
    texts, joined = split_corpus(documents), "".join(documents)
    assert joined.endswith(texts.val + texts.test) and texts.test.startswith("file 19 line")
    assert texts.train == joined[: len(texts.train)] and len(texts.train) / len(joined) > 0.88


def test_char_lm_single_file_cut_at_paragraphs(tmp_path: Path) -> None:
    paragraphs = [f"Paragraph {i} of the story, told once.\n\n" for i in range(1000)]
    repeated = "A refrain that the author repeats near the start and at the very end.\n\n"
    paragraphs[10] = paragraphs[-3] = repeated
    path = tmp_path / "story.txt"
    path.write_text("".join(paragraphs), encoding="utf-8")
    texts = split_corpus(read_documents(str(path)))
    text = "".join(paragraphs)
    val_start = text.index(texts.val)
    assert text[val_start - 2 : val_start] == "\n\n" and abs(val_start - 0.9 * len(text)) < 50
    assert text[val_start:] == texts.val + texts.test and texts.test.startswith("Paragraph ")
    assert repeated in texts.test and shared_windows(texts.test, texts.train) == 0.0
    assert texts.train == text[:val_start].replace(repeated, "", 1), "only the repeat is gone"


def test_char_lm_from_file(tmp_path: Path) -> None:
    text = "".join(f"Line {i}: the quick brown fox jumps.\n" for i in range(300)) + "Z" * 40
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    data = build("char_lm", corpus=str(path), seq_len=32, n_train=100)
    assert data.info["corpus_chars"] == len(text)
    assert "Z" not in data.itos, "the vocabulary comes from the train text only"
    assert (data.test.y == UNK).any(), "characters unseen in training are UNK"
    train = split_corpus(read_documents(str(path))).train
    assert train == text[: len(train)] and train.endswith("jumps.\n")
    assert 0.89 * len(text) < len(train) <= 0.9 * len(text)
    assert "".join(data.itos[i] for i in data.train.x[0].tolist()) in train
    assert data.train.x.shape == (100, 32)


def test_char_lm_unigram_bpc_by_hand(tmp_path: Path) -> None:
    path = tmp_path / "ab.txt"
    path.write_text("ab" * 50 + "aaaa" * 10, encoding="utf-8")  # 140 chars
    data = build("char_lm", corpus=str(path), seq_len=2, n_train=10)
    # train region: 126 chars (ab x 50 then a x 26) -> counts a 76, b 50, unk 0 (+1 each)
    expected = -torch.tensor(77 / 129).log2().item()  # the test region is all "a"
    assert data.info["unigram_bpc"] == data.info["chance"] == pytest.approx(expected)


def test_char_lm_from_folder(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    first = "".join(f"first file, line {i}\n" for i in range(60))
    (tmp_path / "a" / "z.txt").write_text(first, encoding="utf-8")
    (tmp_path / "b.txt").write_text("second file, no newline at the end", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    (tmp_path / ".hidden").write_bytes(b"\0binary")
    assert read_documents(str(tmp_path)) == (first, "second file, no newline at the end\n")
    text = read_corpus(str(tmp_path))
    data = build("char_lm", corpus=str(tmp_path), seq_len=8, n_train=20)
    assert data.info["corpus_chars"] == len(text)
    assert set(data.itos[2:]) == set(split_corpus(read_documents(str(tmp_path))).train)


# ---- text_cls ----

CLASS_WORDS = {"cats": "meow purr whiskers", "dogs": "bark fetch tail", "fish": "swim fin gill"}


def labelled_rows(per_class: int = 20) -> list[dict]:
    return [
        {"text": f"The {words} story number {i}!", "label": label, "id": i}
        for label, words in CLASS_WORDS.items()
        for i in range(per_class)
    ]


def write_table(rows: list[dict], path: Path) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_text_cls_from_local_file(tmp_path: Path, suffix: str) -> None:
    path = write_table(labelled_rows(), tmp_path / f"data{suffix}")
    data = build("text_cls", source=str(path), max_len=16, min_freq=1)
    classes = sorted(CLASS_WORDS)
    assert data.n_outputs == data.info["n_classes"] == 3
    assert data.info["classes"] == ",".join(classes)
    assert [len(s) for s in splits(data).values()] == [48, 6, 6]  # 80/10/10 of 20 per class
    assert data.info["majority_acc"] == data.info["chance"] == pytest.approx(2 / 6)
    for split in splits(data).values():
        assert torch.bincount(split.y, minlength=3).unique().numel() == 1, "stratified"
        for row, label in zip(split.x.tolist(), split.y.tolist(), strict=True):
            words = [data.itos[i] for i in row if i != PAD]
            assert words[:2] == ["the", CLASS_WORDS[classes[label]].split()[0]]


def test_text_cls_integer_labels_and_custom_columns(tmp_path: Path) -> None:
    rows = [
        {"body": r["text"], "y": sorted(CLASS_WORDS).index(r["label"])} for r in labelled_rows()
    ]
    path = write_table(rows, tmp_path / "data.jsonl")
    data = build("text_cls", source=str(path), text_column="body", label_column="y")
    assert data.info["classes"] == "0,1,2"
    for split in splits(data).values():
        for row, label in zip(split.x.tolist(), split.y.tolist(), strict=True):
            assert data.itos[row[1]] == CLASS_WORDS[sorted(CLASS_WORDS)[label]].split()[0]


def test_text_cls_padding_truncation_and_empty_text(tmp_path: Path) -> None:
    rows = labelled_rows() + [{"text": "", "label": "cats", "id": -1}] * 10
    path = write_table(rows, tmp_path / "data.csv")
    data = build("text_cls", source=str(path), max_len=4, min_freq=1, tokenizer="word")
    x = torch.cat([s.x for s in splits(data).values()])
    padding = torch.cat([s.padding for s in splits(data).values()])
    assert x.shape[1] == 4 and torch.equal(padding, x == PAD)
    assert (~padding[:, 0]).all(), "every row keeps a real token"
    assert ((x[:, 0] == UNK) & padding[:, 1:].all(dim=1)).sum() == 10
    assert (~padding).all(dim=1).sum() == 60, "long texts are truncated to max_len"


def test_text_cls_char_tokenizer(tmp_path: Path) -> None:
    path = write_table(labelled_rows(), tmp_path / "data.csv")
    data = build("text_cls", source=str(path), tokenizer="char", max_len=12, min_freq=1)
    assert all(len(t) == 1 for t in data.itos[2:])
    assert (
        "".join(data.itos[i] for i in data.val.x[0].tolist())
        == "The " + "".join(CLASS_WORDS[sorted(CLASS_WORDS)[data.val.y[0].item()]])[:8]
    )


def test_text_cls_stdlib_docs_size_and_classes() -> None:
    data, docs = default("text_cls"), stdlib_docs()
    classes = data.info["classes"].split(",")
    assert len(classes) == data.n_outputs == data.info["n_classes"] >= 4
    assert set(classes) == set(docs.labels) == set(STDLIB_CLASSES)
    assert len(data.val) >= 1000 and len(data.test) >= 1000
    assert len(data.train) + len(data.val) + len(data.test) == len(docs)
    assert len(set(docs.texts)) == len(docs), "each docstring once, so in one split only"
    counts = {n: torch.bincount(s.y, minlength=len(classes)) for n, s in splits(data).items()}
    total = sum(counts.values())
    assert total.max() <= 2 * total.min(), f"roughly balanced: {total.tolist()}"
    for name in ("val", "test"):  # stratified 60/20/20
        assert ((counts[name] - 0.2 * total).abs() <= 1).all(), (name, counts[name])
    assert data.info["chance"] == data.info["majority_acc"] < 0.2
    assert 1000 < data.vocab_size <= 5000


def test_stdlib_files_skip_tests_and_missing_modules(tmp_path: Path) -> None:
    names = ["pkg/b.py", "pkg/a.py", "pkg/test/t.py", "pkg/tests/t.py", "pkg/sub/test_x.py",
             "pkg/idle_test/t.py", "pkg/sub/c.py", "mod.py", "test_mod.py"]  # fmt: skip
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text('"""A docstring of five words."""\n', encoding="utf-8")
    files = stdlib_files(tmp_path, ("mod", "missing", "pkg", "test_mod"))
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        "mod.py", "pkg/a.py", "pkg/b.py", "pkg/sub/c.py",
    ]  # fmt: skip


def test_text_cls_vocabulary_from_train_only_and_rows_without_label(tmp_path: Path) -> None:
    rows = [
        {"text": f"{r['label']} unique{n}", "label": r["label"]}
        for n, r in enumerate(labelled_rows())
    ]
    rows += [{"text": "no label here", "label": ""}] * 5
    path = write_table(rows, tmp_path / "data.csv")
    data = build("text_cls", source=str(path), min_freq=1)
    assert sum(len(s) for s in splits(data).values()) == 60, "rows without a label are dropped"
    assert "label" not in data.itos
    assert data.vocab_size == 2 + 3 + len(data.train), "class words + one unique word per train row"
    for split in (data.val, data.test):
        assert (split.x[:, 1] == UNK).all(), "words seen only outside train are UNK"
    assert (data.train.x[:, 1] != UNK).all()


def test_text_cls_majority_baseline(tmp_path: Path) -> None:
    rows = labelled_rows() + [{"text": f"meow more {i}", "label": "cats"} for i in range(20)]
    data = build("text_cls", source=str(write_table(rows, tmp_path / "data.jsonl")))
    assert torch.bincount(data.test.y).tolist() == [4, 2, 2]
    assert data.info["majority_acc"] == data.info["chance"] == pytest.approx(0.5)


def test_tokenizer_vocabulary_rules() -> None:
    texts = ["on no the the", "no on the", "tail"]
    tok = build_tokenizer(texts, "word", min_freq=2)
    assert tok.itos == ["<pad>", "<unk>", "the", "no", "on"]  # the x3, then no/on x2 by token
    assert build_tokenizer(texts, "word", max_vocab=4).itos == ["<pad>", "<unk>", "the", "no"]
    assert tok.encode("THE tail on") == [2, UNK, 4]
    assert tok.decode([2, 3, PAD]) == "the no"
    words = build_tokenizer(["Hello, World! It's fine."], "word")
    assert words.tokens("Hello, World! It's fine.") == [
        "hello", ",", "world", "!", "it's", "fine", ".",
    ]  # fmt: skip
    chars = build_tokenizer(["hello"], "char")
    assert chars.itos == ["<pad>", "<unk>", "l", "e", "h", "o"]
    assert chars.decode(chars.encode("hole")) == "hole" and chars.encode("x") == [UNK]


# ---- bad inputs ----


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "binary.bin").write_bytes(b"some text\0\x01\x02 more")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (tmp_path / "short.txt").write_text("too short", encoding="utf-8")
    (tmp_path / "empty_dir").mkdir()
    rows = labelled_rows()
    write_table([{"text": r["text"], "kind": r["label"]} for r in rows], tmp_path / "nolabel.csv")
    write_table([{**r, "label": "same"} for r in rows], tmp_path / "oneclass.jsonl")
    return {p.name: str(p) for p in tmp_path.iterdir()} | {"missing": str(tmp_path / "nope")}


BAD_INPUTS = [
    ("char_lm", {"corpus": "missing"}, ["task.corpus=", "no such file or folder"]),
    ("char_lm", {"corpus": "empty.txt"}, ["task.corpus=", "empty.txt", "empty corpus"]),
    ("char_lm", {"corpus": "empty_dir"}, ["task.corpus=", "empty corpus"]),
    ("char_lm", {"corpus": "binary.bin"}, ["task.corpus=", "binary.bin", "NUL"]),
    ("char_lm", {"corpus": "latin1.txt"}, ["task.corpus=", "latin1.txt", "UTF-8"]),
    ("char_lm", {"corpus": "short.txt"}, ["task.corpus=", "task.seq_len=128", "too short"]),
    ("char_lm", {"seq_len": 0}, ["task.seq_len=0", "greater than or equal to 1"]),
    ("text_cls", {"source": "nolabel.csv"}, ["task.label_column='label'", "text, kind"]),
    ("text_cls", {"source": "nolabel.csv", "text_column": "body"}, ["task.text_column='body'"]),
    ("text_cls", {"source": "oneclass.jsonl"}, ["task.label_column='label'", "'same'"]),
    ("text_cls", {"source": "missing.csv"}, ["task.source=", "no such file"]),
    ("text_cls", {"tokenizer": "bpe"}, ["task.tokenizer='bpe'", "'char' or 'word'"]),
    ("text_cls", {"max_len": 0}, ["task.max_len=0"]),
    ("copy", {"length": 0}, ["task.length=0", "greater than or equal to 1"]),
    ("reverse", {"vocab_size": 1}, ["task.vocab_size=1", "greater than or equal to 2"]),
    ("sort", {"n_train": -5}, ["task.n_train=-5"]),
    ("copy", {"length": 2.5}, ["task.length=2.5", "integer"]),
    ("assoc_recall", {"n_queries": 9}, ["task.n_queries=9", "task.n_pairs=8"]),
    ("assoc_recall", {"n_pairs": 40}, ["task.n_pairs=40", "task.n_keys=32"]),
    ("assoc_recall", {"n_pairs": 0}, ["task.n_pairs=0", "greater than or equal to 1"]),
    ("copy", {"length": 2**64}, ["task.length=18446744073709551616", "less than or equal"]),
    ("text_cls", {"text_column": ""}, ["task.text_column=''", "at least 1 character"]),
    ("selective_copy", {"n_data": 40}, ["task.n_data=40", "task.length=32"]),
]


@pytest.mark.parametrize(("name", "overrides", "expected"), BAD_INPUTS)
def test_bad_input_raises(
    files: dict[str, str], name: str, overrides: dict, expected: list
) -> None:
    resolved = {k: files.get(v, v) if isinstance(v, str) else v for k, v in overrides.items()}
    if resolved.get("source") == "missing.csv":
        resolved["source"] = files["missing"] + ".csv"
    with pytest.raises(TaskInputError) as info:
        build(name, **resolved)
    message = str(info.value)
    assert "\n" not in message
    for part in expected:
        assert part in message


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="would download")
def test_hugging_face_source_needs_the_extra() -> None:
    with pytest.raises(TaskInputError, match=r"task.source='ag_news'.*attention-harness\[hf\]"):
        build("text_cls", source="ag_news")


# ---- the per-process data cache (tasks.cache) ----


def test_only_the_synthetic_tasks_are_declared_pure() -> None:
    """A task that reads files must not be cached whole: an edited corpus would go unseen."""
    assert {name for name, task in TASKS.items() if task.pure} == set(SYNTHETIC)


@pytest.mark.parametrize("name", SYNTHETIC)
def test_cached_data_is_the_data_a_fresh_build_gives(name: str) -> None:
    cache = DataCache()
    task, params = get_task(name), {**get_task(name).params.defaults(), "n_train": 300}
    first = cache.build(task, params, 5)
    assert cache.build(task, dict(reversed(params.items())), 5) is first  # key order: same
    fresh = task.build(params, 5)
    assert_same(first, fresh)
    assert (first.info, first.itos, first.vocab_size) == (fresh.info, fresh.itos, fresh.vocab_size)
    assert cache.build(task, params, 6) is not first  # another seed, other training data
    assert cache.build(task, {**params, "n_train": 301}, 5) is not first
    assert (cache.hits, cache.misses, len(cache)) == (1, 3, 3)


def _counting(task_name: str, pure: bool) -> tuple[Task, list[int]]:
    """A registered task under another name whose build counts its calls."""
    task, calls = get_task(task_name), []

    def build(params, seed):  # type: ignore[no-untyped-def]
        calls.append(seed)
        return task.build(params, seed)

    return dataclasses.replace(task, name=f"counted_{task_name}", build=build, pure=pure), calls


def test_a_task_that_is_not_pure_is_built_every_time() -> None:
    cache = DataCache()
    task, calls = _counting("copy", pure=False)
    params = {**task.params.defaults(), "n_train": 100}
    assert cache.build(task, params, 0) is not cache.build(task, params, 0)
    assert calls == [0, 0] and len(cache) == 0


def test_the_cache_keeps_the_most_recently_used_data_within_its_bytes() -> None:
    task, calls = _counting("copy", pure=True)
    params = {**task.params.defaults(), "n_train": 200}
    size = data_bytes(task.build(params, 0))
    cache = DataCache(max_bytes=2 * size)  # room for two seeds' data
    cache.build(task, params, 0)
    cache.build(task, params, 1)
    cache.build(task, params, 0)  # seed 0 is now the more recent
    cache.build(task, params, 2)  # evicts seed 1
    assert cache.bytes == 2 * size and len(cache) == 2
    calls.clear()
    cache.build(task, params, 0)
    cache.build(task, params, 2)
    assert calls == []
    cache.build(task, params, 1)
    assert calls == [1]
    small = DataCache(max_bytes=size - 1)  # data larger than the whole cache is not kept
    assert_same(small.build(task, params, 0), task.build(params, 0))
    assert len(small) == 0 and small.bytes == 0
