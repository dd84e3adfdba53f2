"""Where text comes from: files, folders, tables, Hugging Face datasets, and offline defaults.

Plain text (char_lm's `corpus`):
- "pydoc_data": the English reference text shipped with every CPython
  (`pydoc_data.topics.topics`: 79 documents in sorted key order, ~465k characters);
- a path to a UTF-8 text file (one document), or to a folder: every regular file under it,
  recursively, sorted by relative path, each ending in a newline, one document each. Hidden
  files and folders (names starting with ".") are skipped, so a checkout's .git never
  reaches the corpus.
How char_lm splits documents and removes repeated text: tasks.text and tasks.dedup.

Labelled text (text_cls's `source`):
- "stdlib_docs": docstrings (module, class, function) of 490 standard-library source
  files, read with `ast` without importing them, labelled by topic: the nine classes of
  STDLIB_CLASSES (concurrency, diagnostics, email, files, gui, language, network, numeric,
  packaging), each a fixed list of modules; a module this Python lacks is skipped. Tests
  (test/, tests/, idle_test/, test_*.py) are skipped, docstrings under 5 words dropped, and
  duplicates kept once (dropped altogether when two classes share them); a class with more
  than MAX_PER_CLASS (800) keeps a fixed random 800. On CPython 3.11.7: 5,903 docstrings,
  concurrency 670, diagnostics 657, email 601, files 800 (of 912), gui 800 (of 896),
  language 800 (of 1,277), network 666, numeric 481, packaging 428; tasks.text splits them
  60/20/20 (3,543 / 1,180 / 1,180). Extraction takes seconds, so the result is also cached
  on disk (`disk_cached`: $XDG_CACHE_HOME or ~/.cache, attention-harness/).
- a local .csv, .jsonl / .json (one object per line, or one array) or .parquet file;
- any other name: a Hugging Face dataset through the optional `datasets` library
  (its "train" and "test" splits).

Readers raise `TaskInputError` naming the parameter and the bad value. Results are cached
per source (and per file modification time and size, so edited files are read again).

About 450 lines: every source of text (files, folders, tables, Hugging Face, the two offline
defaults and their disk cache) in one place, so a reader sees all that a task can read.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tasks.base import TaskInputError

PYDOC_CORPUS = "pydoc_data"
STDLIB_DOCS = "stdlib_docs"
MIN_DOC_WORDS = 5
TABLE_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")

FileStamp = tuple[str, int, int]  # (path, mtime_ns, size): a cache key that sees edits


def stamp(path: Path) -> FileStamp:
    st = path.stat()
    return (str(path), st.st_mtime_ns, st.st_size)


# ---- plain text corpora ----


def read_corpus(corpus: str) -> str:
    """The text of char_lm's `corpus` parameter (a built-in name, a file or a folder)."""
    return "".join(read_documents(corpus))


def read_documents(corpus: str) -> tuple[str, ...]:
    """The corpus as its documents: pydoc topics in sorted key order, a folder's non-empty
    files in sorted order (each ending in a newline), or a file's whole text."""
    if corpus == PYDOC_CORPUS:
        return pydoc_topics()
    path = Path(corpus).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = list_files(path)
    else:
        raise TaskInputError(f"task.corpus={corpus!r}: no such file or folder")
    documents = read_files(corpus, tuple(stamp(f) for f in files))
    if not documents:
        raise TaskInputError(f"task.corpus={corpus!r}: empty corpus (no characters)")
    return documents


@lru_cache(maxsize=1)
def pydoc_topics() -> tuple[str, ...]:
    from pydoc_data.topics import topics

    return tuple(topics[key] for key in sorted(topics))


def list_files(folder: Path) -> list[Path]:
    """Regular files under `folder`, recursively, sorted by relative path; hidden ones skipped."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(root, n) for n in names if not n.startswith(".")]
    files = [f for f in found if f.is_file()]
    return sorted(files, key=lambda f: f.relative_to(folder).as_posix())


@lru_cache(maxsize=8)
def read_files(corpus: str, stamps: tuple[FileStamp, ...]) -> tuple[str, ...]:
    """Non-empty files decoded as UTF-8, each ending in a newline when there is more than one."""
    texts = [read_text_file(corpus, path) for path, _, _ in stamps]
    if len(texts) > 1:
        texts = [t if t.endswith("\n") else t + "\n" for t in texts if t]
    return tuple(t for t in texts if t)


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

# Topic classes of standard-library modules (a module name is a .py file or a package folder
# under the stdlib root). Generic text utilities (re, string, textwrap, codecs, argparse, ...)
# are left out: their docstrings name no topic a reader could tell apart.
STDLIB_CLASSES: dict[str, tuple[str, ...]] = {
    "concurrency": (
        "asyncio", "concurrent", "multiprocessing", "threading", "_threading_local", "queue",
        "sched", "selectors", "subprocess", "signal", "asynchat", "asyncore",
    ),
    "diagnostics": (
        "unittest", "doctest", "bdb", "pdb", "trace", "profile", "cProfile", "pstats", "timeit",
        "tracemalloc", "logging", "warnings", "traceback",
    ),
    "email": (
        "email", "mailbox", "mailcap", "smtplib", "smtpd", "imaplib", "poplib", "nntplib",
        "quopri", "base64", "uu",
    ),
    "files": (
        "tarfile", "zipfile", "shutil", "pathlib", "_pyio", "io", "os", "ntpath", "posixpath",
        "genericpath", "stat", "tempfile", "glob", "fnmatch", "fileinput", "filecmp", "gzip",
        "bz2", "lzma", "_compression", "chunk", "wave", "aifc", "sunau", "xml", "html",
        "_markupbase", "json", "csv", "configparser", "plistlib", "tomllib", "pickle",
        "pickletools", "shelve", "dbm", "xdrlib",
    ),
    "gui": ("tkinter", "turtle", "turtledemo", "curses"),
    "language": (
        "importlib", "inspect", "typing", "ast", "symtable", "dis", "opcode", "tokenize",
        "token", "pyclbr", "code", "codeop", "types", "abc", "_py_abc", "dataclasses", "enum",
        "functools", "operator", "_collections_abc", "collections", "contextlib", "copy",
        "copyreg", "weakref", "keyword", "pkgutil", "runpy", "zipimport", "modulefinder", "imp",
        "compileall", "py_compile", "reprlib", "lib2to3", "pydoc", "rlcompleter", "linecache",
        "__future__",
    ),
    "network": (
        "http", "urllib", "wsgiref", "xmlrpc", "socketserver", "socket", "ssl", "ftplib",
        "telnetlib", "cgi", "cgitb", "webbrowser", "mimetypes", "ipaddress",
    ),
    "numeric": (
        "_pydecimal", "decimal", "fractions", "numbers", "statistics", "random", "datetime",
        "calendar", "_strptime", "zoneinfo", "colorsys", "secrets", "heapq", "bisect",
    ),
    "packaging": (
        "distutils", "ensurepip", "venv", "sysconfig", "site", "_osx_support", "_aix_support",
        "platform", "zipapp",
    ),
}  # fmt: skip
MAX_PER_CLASS = 800  # larger classes (gui, language, files) keep a fixed random 800
TEST_DIRS = {"test", "tests", "idle_test"}
DOC_NODES = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


@lru_cache(maxsize=1)
def stdlib_docs() -> Labelled:
    """Docstrings of STDLIB_CLASSES' modules, labelled by class (see the module docstring).

    Parsing the sources takes seconds, so the result is also kept on disk (see `disk_cached`),
    keyed by the Python version, every source file's size and modification time, and this
    module's own source.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = {label: stdlib_files(root, modules) for label, modules in STDLIB_CLASSES.items()}
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    stamps = {label: [stamp(f) for f in paths] for label, paths in files.items()}
    key = [sys.version, code, stamps]
    rows = disk_cached("stdlib_docs", key, lambda: extract_stdlib_docs(files))
    return Labelled(tuple(rows["texts"]), tuple(rows["labels"]))


def stdlib_files(root: Path, modules: tuple[str, ...]) -> list[Path]:
    """Source files of `modules` in the given order (a package's sorted); tests and missing
    modules skipped."""
    found = []
    for module in modules:
        if (root / module).is_dir():
            paths = sorted((root / module).rglob("*.py"))
        else:
            paths = [p for p in [root / f"{module}.py"] if p.is_file()]
        found += [p for p in paths if not is_test(p.relative_to(root))]
    return found


def is_test(relative: Path) -> bool:
    parts = [*relative.parts[:-1], relative.stem]
    return any(p in TEST_DIRS or p.startswith("test_") for p in parts)


def extract_stdlib_docs(files: dict[str, list[Path]]) -> dict[str, list[str]]:
    """Docstrings per class; shared ones kept once or dropped (see the module docstring)."""
    classes: dict[str, set[str]] = {}  # docstring -> classes it appears in, in first-seen order
    for label, paths in files.items():
        for path in paths:
            for doc in file_docstrings(path):
                classes.setdefault(doc, set()).add(label)
    by_class: dict[str, list[str]] = {label: [] for label in files}
    for doc, labels in classes.items():
        if len(labels) == 1:
            by_class[labels.pop()].append(doc)
    texts, labels = [], []
    for label, docs in by_class.items():
        if len(docs) > MAX_PER_CLASS:  # a fixed sample, kept in first-seen order
            keep = sorted(random.Random(label).sample(range(len(docs)), MAX_PER_CLASS))
            docs = [docs[i] for i in keep]
        texts += docs
        labels += [label] * len(docs)
    return {"texts": texts, "labels": labels}


def file_docstrings(path: Path) -> list[str]:
    """Module, class and function docstrings of at least MIN_DOC_WORDS words in one file."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):  # broken, non-UTF-8 or unreadable: skip it
        return []
    docs = [ast.get_docstring(tree)] + [ast.get_docstring(node) for node in definitions(tree.body)]
    return [doc for doc in docs if doc and len(doc.split()) >= MIN_DOC_WORDS]


def definitions(body: list[ast.stmt]) -> Iterator[ast.AST]:
    """Class and function definitions in `body` and the statements nested in it, in source
    order (walking statements only: ast.walk, which visits every expression, is 7x slower)."""
    for node in body:
        if isinstance(node, DOC_NODES):
            yield node
        for name in ("body", "orelse", "finalbody", "handlers", "cases"):
            for child in getattr(node, name, ()):
                if isinstance(child, ast.stmt):
                    yield from definitions([child])
                else:  # an except handler or a match case: statements one level down
                    yield from definitions(child.body)


# ---- a small on-disk cache ----


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/attention-harness, or ~/.cache/attention-harness."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "attention-harness"


def disk_cached(name: str, key: object, build: Callable[[], dict]) -> dict:
    """`build()`, kept as JSON under cache_dir() by a digest of `key`; a missing, unreadable
    or unwritable cache only means building again."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    try:
        path = cache_dir() / f"{name}-{digest}.json"
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, RuntimeError, ValueError):  # RuntimeError: no home folder
        pass
    value = build()
    try:
        path = cache_dir() / f"{name}-{digest}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{name}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(value, file)
            os.replace(tmp, path)  # atomic: concurrent workers never read half a file
        except BaseException:
            os.unlink(tmp)
            raise
    except (OSError, RuntimeError):
        pass
    return value


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
