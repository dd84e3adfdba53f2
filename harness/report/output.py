"""The output stage: a report is written into a temporary folder beside its own and swapped in.

Everything is first written into a hidden temporary folder next to the output folder and moved
into place at the end, so a report that fails half-way leaves nothing half-written, and an
earlier report stays as it was: the output folder holds either the whole earlier report or the
whole new one. A folder that cannot be written (a file in the way, no permission, a full disk)
is a UserError naming it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.errors import UserError

REPORT_NAMES = ("report.html", "report.pdf", "figures")  # what a report puts in its folder


def default_folder(experiment: str) -> Path:
    """reports/<experiment as one folder name> (no separators, no leading dots): MLflow takes
    any experiment name, and one named like a path must not write outside reports/."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment).lstrip(".")
    return Path("reports") / (cleaned or "experiment")


def check_out_folder(out: Path, what: str = "--out") -> None:
    """Before any work: `out` is, or can be made, a folder this process can write in."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{what} {out}: exists and is not a folder")
    existing = next(p for p in (out, *out.parents) if p.exists())  # "." or "/" at the latest
    if not existing.is_dir():
        raise UserError(f"{what} {out}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what} {out}: no permission to write in {existing}")


@contextmanager
def work_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside `out` for the new report, removed afterwards whatever
    happens; an OSError inside (writing, swapping) becomes one UserError naming `out`."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    except OSError as err:
        raise UserError(cannot_write(out, err)) from None
    try:
        yield work
    except OSError as err:
        raise UserError(cannot_write(out, err)) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cannot_write(out: Path, err: OSError) -> str:
    where = f" ({err.filename})" if err.filename else ""
    return f"cannot write the report to {out}: {err.strerror or err}{where}"


def replace(work: Path, out: Path, names: list[str], aside: Iterable[str] = REPORT_NAMES) -> None:
    """Move the finished report's `names` from `work` into `out`, all or nothing.

    The earlier files named in `aside` (a report: every name of REPORT_NAMES and its data
    files, so no stale PDF stays beside a new HTML; an export: the files it writes) are first
    moved aside into `work`; if any move fails or is interrupted, what was moved is moved back,
    so `out` never holds a mix of the two. Renames within one file system: each step is atomic.
    """
    out.mkdir(parents=True, exist_ok=True)
    previous = work / ".previous"
    previous.mkdir()
    moved: list[tuple[Path, Path]] = []  # (from, to), in order
    try:
        for name in dict.fromkeys(aside):
            if (out / name).exists() or (out / name).is_symlink():
                _move(out / name, previous / name, moved)
        for name in names:
            _move(work / name, out / name, moved)
    except BaseException:
        for source, target in reversed(moved):
            target.rename(source)
        raise


def _move(source: Path, target: Path, moved: list[tuple[Path, Path]]) -> None:
    source.rename(target)
    moved.append((source, target))
