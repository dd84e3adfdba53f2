"""Results as data: the report's tables as files (CSV, Parquet, LaTeX, JSON) a script can read.

Three tables, each written as `<table>.<ext>` (`harness export`, and beside every report):

- `results`: one row per configuration (task x sweep point x attention x optimizer), the
  report's results table (`stats.table.RESULT_COLUMNS`) with its numbers unchanged;
- `comparisons`: the report's paired comparisons (`stats.comparisons.COMPARISON_COLUMNS`);
- `runs`: one row per child run of the experiment, every phase and status (`collect.RUN_COLUMNS`).

Files hold flat, typed columns: `run_ids` is one space-separated string, `lr` the number
(NaN when a configuration's final runs used several rates), the swept values of a results row
one column per swept key (`model.d_k`), and a run's hyper-parameters and data facts one column
per dotted MLflow param (`model.d_model`, `data.n_train`), numbers as numbers. JSON is a list
of records, numbers to the last digit, NaN and infinity as null (infinity is a target never
reached: see `reached`), times in ISO 8601.
LaTeX is a `tabular` fragment of the results and the comparisons (a subset of columns, for a
paper: `\\input{results.tex}` inside a `table`; no package needed); the runs table, one row per
run, is not a table for a paper and is not written as LaTeX.

Files are written into a temporary folder beside the output folder and moved in at the end
(harness.report.output), so a failed export leaves the folder as it was.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from harness.errors import UserError
from harness.report.collect import RUN_COLUMNS, Experiment, collect
from harness.report.output import replace, work_folder
from harness.report.stats.comparisons import comparisons
from harness.report.stats.scores import scores
from harness.report.stats.table import RESULT_COLUMNS, results_table

EXTENSIONS = {"csv": "csv", "parquet": "parquet", "latex": "tex", "json": "json"}
FORMATS = tuple(EXTENSIONS)
TABLES = ("results", "comparisons", "runs")
LATEX_TABLES = ("results", "comparisons")  # the runs table is no table for a paper
# Every file a report or an export may put in its folder (for the swap of output.replace).
DATA_NAMES = tuple(
    f"{table}.{ext}"
    for table in TABLES
    for fmt, ext in EXTENSIONS.items()
    if fmt != "latex" or table in LATEX_TABLES
)
_DROPPED_RUN_COLUMNS = ("params", "sweep_values", "attn_keys")  # not scalars: flattened instead
_COUNTS = ("n_params", "n_train", "n_val", "n_test")


@dataclass(frozen=True)
class Tables:
    """The three tables of an experiment, as its files hold them."""

    results: pd.DataFrame
    comparisons: pd.DataFrame
    runs: pd.DataFrame

    def items(self) -> Iterable[tuple[str, pd.DataFrame]]:
        return ((name, getattr(self, name)) for name in TABLES)


def parse_formats(text: str, option: str = "--format") -> tuple[str, ...]:
    """ "csv, parquet" -> ("csv", "parquet"); an unknown or empty list is a UserError."""
    formats = tuple(dict.fromkeys(f.strip() for f in text.split(",") if f.strip()))
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise UserError(f"{option} {text!r}: choose from {', '.join(FORMATS)} (comma-separated)")
    return formats


def tables(exp: Experiment, results: pd.DataFrame, tests: pd.DataFrame) -> Tables:
    """The files' tables from the report's own results table and comparisons."""
    return Tables(results_frame(results), tests.reset_index(drop=True), runs_frame(exp.runs))


def experiment_tables(exp: Experiment) -> Tables:
    """The tables of a collected experiment, computed as the report computes them."""
    sc = scores(exp)
    return tables(exp, results_table(exp, sc), comparisons(exp, sc))


def export(
    client: MlflowClient, experiment: str, out: Path, formats: tuple[str, ...] = FORMATS
) -> list[Path]:
    """`harness export`: read the experiment, write its tables in `formats` into `out` (all or
    nothing), and return the files written."""
    exp = collect(client, experiment, ui_url="")
    data = experiment_tables(exp)
    with work_folder(out) as work:
        names = write_tables(data, work, formats, title=experiment)
        replace(work, out, names, aside=names)
    return [out / name for name in names]


def write_tables(data: Tables, folder: Path, formats: Iterable[str], title: str = "") -> list[str]:
    """Write every table in every format into `folder`; the file names, in order."""
    names = []
    for fmt in formats:
        for table, frame in data.items():
            if fmt == "latex" and table not in LATEX_TABLES:
                continue
            name = f"{table}.{EXTENSIONS[fmt]}"
            WRITERS[fmt](frame, folder / name, table, title)
            names.append(name)
    return names


# --------------------------------------------------------------------------- flat tables


def results_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The results table with flat, typed columns (see the module's docstring)."""
    out = table.drop(columns=["sweep_values", "run_ids"]).copy()
    out["lr"] = [_one_rate(runs) for runs in table.lr]
    for column in _COUNTS:
        out[column] = _integers(out[column])
    out["run_ids"] = [" ".join(ids) for ids in table.run_ids]
    swept = _columns_of(table.sweep_values)
    out = pd.concat([out, swept], axis=1)
    return out[[*RESULT_COLUMNS[:-2], "run_ids", *swept.columns]].reset_index(drop=True)


def runs_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """The collected runs with flat, typed columns: the hyper-parameters and data facts as one
    column each (dotted param names), times as UTC timestamps."""
    keep = [c for c in RUN_COLUMNS if c not in _DROPPED_RUN_COLUMNS]
    out = runs[[*keep, "current"]].copy() if "current" in runs else runs[keep].copy()
    out["diverged_at"] = pd.array(
        [None if pd.isna(v) else int(v) for v in runs.diverged_at], dtype="Int64"
    )
    for column in _COUNTS:
        out[column] = _integers(out[column])
    for column in ("start_time", "end_time"):
        out[column] = pd.to_datetime(pd.to_numeric(runs[column]), unit="ms", utc=True)
    params = [{k: v for k, v in p.items() if "." in k} for p in runs.params]
    out = pd.concat([out, _columns_of(params, parse=True)], axis=1)
    return out.reset_index(drop=True)


def _one_rate(text: str) -> float:
    """The results table's rate text ("0.003", or "0.001, 0.003") as one number, NaN if several."""
    parts = [p for p in str(text).split(",") if p.strip()]
    return float(parts[0]) if len(parts) == 1 else math.nan


def _integers(column: pd.Series) -> pd.Series:
    """Counts as integers, missing ones as <NA>."""
    values = pd.to_numeric(column, errors="coerce").astype(float)
    return pd.array([int(v) if np.isfinite(v) else None for v in values], dtype="Int64")


def _columns_of(records: Iterable[Mapping[str, Any]], parse: bool = False) -> pd.DataFrame:
    """A column per key of `records` (first-seen order); `parse`: values are MLflow param
    text, read back as JSON numbers, booleans and null where they are. A column that is not all
    numbers (or all booleans) holds text."""
    rows = [{k: _parsed(v) if parse else v for k, v in r.items()} for r in records]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    index = range(len(rows))
    columns = {
        k: _typed(pd.Series([r.get(k) for r in rows], index=index, dtype=object)) for k in keys
    }
    return pd.DataFrame(columns, index=index)


def _parsed(text: Any) -> Any:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return text
    return value if value is None or isinstance(value, bool | int | float) else text


def _typed(column: pd.Series) -> pd.Series:
    """Integers as (nullable) integers, other numbers as floats, booleans as booleans, the
    rest as text; a missing value stays missing."""
    values = [v for v in column if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if values and all(isinstance(v, bool) for v in values):
        return column.astype("boolean")
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return column.astype("Int64")
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return pd.to_numeric(column).astype(float)
    return pd.Series([None if v is None else str(v) for v in column], index=column.index,
                     dtype="str")  # fmt: skip


# --------------------------------------------------------------------------- writers


def _csv(frame: pd.DataFrame, path: Path, table: str, title: str) -> None:
    frame.to_csv(path, index=False)


def _parquet(frame: pd.DataFrame, path: Path, table: str, title: str) -> None:
    frame.to_parquet(path, index=False, engine="pyarrow")


def _json(frame: pd.DataFrame, path: Path, table: str, title: str) -> None:
    """Records, numbers to the last digit (Python's shortest round-trip form); NaN, infinity and
    missing values as null, timestamps in ISO 8601."""
    records = [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict("records")]
    text = json.dumps(records, indent=1, allow_nan=False, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")


def _plain(value: Any) -> Any:
    """A cell as JSON holds it."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _latex(frame: pd.DataFrame, path: Path, table: str, title: str) -> None:
    path.write_text(latex_table(frame, table, title), encoding="utf-8")


WRITERS: dict[str, Callable[[pd.DataFrame, Path, str, str], None]] = {
    "csv": _csv,
    "parquet": _parquet,
    "json": _json,
    "latex": _latex,
}


# --------------------------------------------------------------------------- LaTeX


def _fixed(digits: int) -> Callable[[Any], str]:
    return lambda v: f"{v:.{digits}f}"


def _count(v: Any) -> str:
    return f"{int(v)}"


def _p(v: Any) -> str:
    return f"{v:.1e}" if v < 1e-4 else f"{v:.4f}"


def _steps(v: Any) -> str:
    return "not reached" if math.isinf(v) else f"{v:.0f}"


# The columns a LaTeX table shows, each with its format (text columns: None).
LATEX_COLUMNS: dict[str, dict[str, Callable[[Any], str] | None]] = {
    "results": {
        "task": None, "sweep": None, "attention": None, "optimizer": None, "metric": None,
        "lr": lambda v: f"{v:g}", "n": _count, "diverged": _count, "mean": _fixed(4),
        "ci_low": _fixed(4), "ci_high": _fixed(4), "n_params": _count, "ttt_steps": _steps,
    },
    "comparisons": {
        "task": None, "sweep": None, "label_a": None, "label_b": None, "n": _count,
        "diff": _fixed(4), "diff_low": _fixed(4), "diff_high": _fixed(4),
        "p_improve": _fixed(2), "p": _p, "p_holm": _p, "better": None,
    },
}  # fmt: skip


def latex_table(frame: pd.DataFrame, table: str, title: str = "") -> str:
    """A `tabular` of the table's LATEX_COLUMNS (`sweep` only in a grid with a sweep): numbers
    formatted, missing values as --, every special character escaped (pandas' LaTeX escaping
    of the Styler: & % $ # _ { } ~ ^ \\); plain `\\hline` rules, so it needs no package."""
    formats = LATEX_COLUMNS[table]
    swept = "sweep" in frame and bool((frame["sweep"] != "").any())
    columns = [c for c in formats if c != "sweep" or swept]
    text = pd.DataFrame(
        {c: [_cell(v, formats[c]) for v in frame[c]] for c in columns}, index=range(len(frame))
    )
    align = "".join("l" if formats[c] is None else "r" for c in columns)
    rule = [{"selector": s, "props": ":hline;"} for s in ("toprule", "midrule", "bottomrule")]
    styler = text.style.hide(axis="index").format(escape="latex")
    styler = styler.format_index(escape="latex", axis=1).set_table_styles(rule)
    about = f"{table} of experiment {title}" if title else table
    comment = " ".join(f"{about}, written by attention-harness".split())  # one line
    return f"% {comment}\n" + styler.to_latex(column_format=align)


def _cell(value: Any, fmt: Callable[[Any], str] | None) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "--"
    if fmt is None:
        return str(value)
    return fmt(value)
