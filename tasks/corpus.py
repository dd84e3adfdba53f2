"""Where text comes from: files, folders, tables, Hugging Face datasets, and offline defaults.

Plain text (char_lm's `corpus`):
- "pydoc_data": the English reference text shipped with every CPython
  (`pydoc_data.topics.topics`, values joined in sorted key order, ~465k characters);
- a path to a UTF-8 text file, or to a folder: every regular file under it, recursively,
  sorted by relative path, each ending in a newline, concatenated. Hidden files and folders
  (names starting with ".") are skipped, so a checkout's .git never reaches the corpus.

Labelled text (text_cls's `source`):
- "stdlib_docs": docstrings (module, class, function) of four standard-library packages,
  read with `ast` from their source files without importing them, labelled by package.
  Tests (test/, tests/) are skipped, docstrings under 5 words dropped, and duplicates
  kept once (dropped altogether when two packages share them). On CPython 3.11.7:
  asyncio 300, email 291, logging 230, xml 217 (1038 in all).
- a local .csv, .jsonl / .json (one object per line, or one array) or .parquet file;
- any other name: a Hugging Face dataset through the optional `datasets` library
  (its "train" and "test" splits).

Readers raise `TaskInputError` naming the parameter and the bad value. Results are cached
per source (and per file modification time and size, so edited files are read again).
"""

from __future__ import annotations

import ast
import json
import os
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tasks.base import TaskInputError

PYDOC_CORPUS = "pydoc_data"
STDLIB_DOCS = "stdlib_docs"
STDLIB_PACKAGES = ("asyncio", "email", "logging", "xml")
MIN_DOC_WORDS = 5
TABLE_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")

FileStamp = tuple[str, int, int]  # (path, mtime_ns, size): a cache key that sees edits


def stamp(path: Path) -> FileStamp:
    st = path.stat()
    return (str(path), st.st_mtime_ns, st.st_size)


# ---- plain text corpora ----


def read_corpus(corpus: str) -> str:
    """The text of char_lm's `corpus` parameter (a built-in name, a file or a folder)."""
    if corpus == PYDOC_CORPUS:
        return pydoc_text()
    path = Path(corpus).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = list_files(path)
    else:
        raise TaskInputError(f"task.corpus={corpus!r}: no such file or folder")
    text = read_files(corpus, tuple(stamp(f) for f in files))
    if not text:
        raise TaskInputError(f"task.corpus={corpus!r}: empty corpus (no characters)")
    return text


@lru_cache(maxsize=1)
def pydoc_text() -> str:
    from pydoc_data.topics import topics

    return "".join(topics[key] for key in sorted(topics))


def list_files(folder: Path) -> list[Path]:
    """Regular files under `folder`, recursively, sorted by relative path; hidden ones skipped."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(root, n) for n in names if not n.startswith(".")]
    files = [f for f in found if f.is_file()]
    return sorted(files, key=lambda f: f.relative_to(folder).as_posix())


@lru_cache(maxsize=8)
def read_files(corpus: str, stamps: tuple[FileStamp, ...]) -> str:
    """Files decoded as UTF-8, each ending in a newline when there is more than one."""
    texts = [read_text_file(corpus, path) for path, _, _ in stamps]
    if len(texts) > 1:
        texts = [t if not t or t.endswith("\n") else t + "\n" for t in texts]
    return "".join(texts)


def read_text_file(corpus: str, path: str) -> str:
    data = Path(path).read_bytes()
    in_folder = Path(path) != Path(corpus).expanduser()
    where = f"task.corpus={corpus!r}" + (f": {path!r}" if in_folder else "")
    if b"\0" in data:
        raise TaskInputError(f"{where}: not a text file (contains NUL bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TaskInputError(
            f"{where}: not a text file (not valid UTF-8 at byte {e.start})"
        ) from None
    return text.removeprefix("\ufeff")


# ---- labelled text ----


@dataclass(frozen=True)
class Labelled:
    texts: tuple[str, ...]
    labels: tuple[str, ...]  # label values as strings

    def __len__(self) -> int:
        return len(self.texts)


def read_labelled(
    source: str, text_column: str, label_column: str
) -> tuple[Labelled, Labelled | None]:
    """Labelled texts of text_cls's `source`, and the source's own test split if it has one."""
    if source == STDLIB_DOCS:
        return stdlib_docs(), None
    path = Path(source).expanduser()
    if path.is_file():
        return read_table(stamp(path), source, text_column, label_column), None
    if path.suffix.lower() in TABLE_SUFFIXES:
        raise TaskInputError(f"task.source={source!r}: no such file")
    return read_hf(source, text_column, label_column)


@lru_cache(maxsize=8)
def read_table(file: FileStamp, source: str, text_column: str, label_column: str) -> Labelled:
    readers = {
        ".csv": read_csv,
        ".jsonl": read_jsonl,
        ".json": read_jsonl,
        ".parquet": read_parquet,
    }
    suffix = Path(file[0]).suffix.lower()
    if suffix not in readers:
        raise TaskInputError(
            f"task.source={source!r}: unsupported file type {suffix or '(none)'!r} "
            f"(use {', '.join(TABLE_SUFFIXES)})"
        )
    return readers[suffix](Path(file[0]), source, text_column, label_column)


def read_csv(path: Path, source: str, text_column: str, label_column: str) -> Labelled:
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except ValueError as e:  # parser errors, empty files, bad encodings
        raise TaskInputError(f"task.source={source!r}: cannot read CSV ({first_line(e)})") from e
    check_columns(list(frame.columns), source, text_column, label_column)
    return labelled(frame[text_column].tolist(), frame[label_column].tolist())


def read_jsonl(path: Path, source: str, text_column: str, label_column: str) -> Labelled:
    """One JSON object per line, or a single JSON array of objects."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TaskInputError(f"task.source={source!r}: not UTF-8 ({first_line(e)})") from e
    lines = [text] if text.lstrip().startswith("[") else text.splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            parsed = json.loads(line) if line.strip() else []
        except ValueError as e:
            raise TaskInputError(
                f"task.source={source!r}: line {number} is not JSON ({first_line(e)})"
            ) from e
        rows += parsed if isinstance(parsed, list) else [parsed]
    if not all(isinstance(row, dict) for row in rows):
        raise TaskInputError(f"task.source={source!r}: every JSON record must be an object")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    check_columns(columns, source, text_column, label_column)
    return labelled([r.get(text_column) for r in rows], [r.get(label_column) for r in rows])


def read_parquet(path: Path, source: str, text_column: str, label_column: str) -> Labelled:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TaskInputError(
            f"task.source={source!r}: reading Parquet needs pyarrow (pip install pyarrow)"
        ) from None
    try:
        check_columns(pq.read_schema(path).names, source, text_column, label_column)
        table = pq.read_table(path, columns=list(dict.fromkeys([text_column, label_column])))
    except TaskInputError:
        raise
    except Exception as e:  # pyarrow raises its own error types for corrupt files
        raise TaskInputError(
            f"task.source={source!r}: cannot read Parquet ({first_line(e)})"
        ) from e
    return labelled(table.column(text_column).to_pylist(), table.column(label_column).to_pylist())


def check_columns(names: list[str], source: str, text_column: str, label_column: str) -> None:
    for param, name in (("text_column", text_column), ("label_column", label_column)):
        if name not in names:
            raise TaskInputError(
                f"task.{param}={name!r}: no such column in {source!r} "
                f"(columns: {', '.join(map(str, names)) or 'none'})"
            )


def labelled(texts: list, labels: list) -> Labelled:
    """Labels as strings; rows without a label are dropped, a missing text becomes ""."""
    rows = [
        ("" if text is None else str(text), str(label))
        for text, label in zip(texts, labels, strict=True)
        if label is not None and label != ""
    ]
    return Labelled(tuple(t for t, _ in rows), tuple(label for _, label in rows))


@lru_cache(maxsize=4)
def read_hf(name: str, text_column: str, label_column: str) -> tuple[Labelled, Labelled]:
    """A Hugging Face dataset's "train" and "test" splits (downloads on first use)."""
    try:
        import datasets
    except ImportError:
        raise TaskInputError(
            f"task.source={name!r}: not a local file, and reading Hugging Face datasets needs "
            "the 'hf' extra (pip install attention-harness[hf])"
        ) from None
    try:
        dataset = datasets.load_dataset(name)
    except Exception as e:  # network, missing dataset, bad config: all user-fixable
        raise TaskInputError(
            f"task.source={name!r}: cannot load Hugging Face dataset ({first_line(e)})"
        ) from e
    missing = [s for s in ("train", "test") if s not in dataset]
    if missing:
        raise TaskInputError(
            f"task.source={name!r}: Hugging Face dataset has no {' or '.join(missing)} split "
            f"(splits: {', '.join(dataset)})"
        )
    train, test = (
        hf_labelled(dataset[s], name, text_column, label_column) for s in ("train", "test")
    )
    return train, test


def hf_labelled(split, source: str, text_column: str, label_column: str) -> Labelled:
    """One split's texts and labels; class-label integers become their names."""
    check_columns(split.column_names, source, text_column, label_column)
    labels = split[label_column]
    names = getattr(split.features[label_column], "names", None)
    if names:
        labels = [None if i is None or i < 0 else names[i] for i in labels]
    return labelled(split[text_column], labels)


# ---- standard-library docstrings ----


@lru_cache(maxsize=1)
def stdlib_docs() -> Labelled:
    """Docstrings of STDLIB_PACKAGES, labelled by package (see the module docstring)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    pairs: dict[str, set[str]] = {}  # docstring -> packages it appears in, in first-seen order
    for package in STDLIB_PACKAGES:
        for doc in package_docstrings(root / package):
            pairs.setdefault(doc, set()).add(package)
    kept = [(doc, packages.pop()) for doc, packages in pairs.items() if len(packages) == 1]
    return Labelled(tuple(d for d, _ in kept), tuple(p for _, p in kept))


def package_docstrings(folder: Path) -> list[str]:
    """Docstrings of at least MIN_DOC_WORDS words in a package's sources, tests skipped."""
    docs = []
    for path in sorted(folder.rglob("*.py")):
        if {"test", "tests"} & set(path.relative_to(folder).parts):
            continue
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError):  # a broken or non-UTF-8 source: not worth failing on
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc.split()) >= MIN_DOC_WORDS:
                    docs.append(doc)
    return docs


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
