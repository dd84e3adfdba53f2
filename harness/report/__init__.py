"""`harness report`: MLflow -> pandas -> statistics -> seaborn figures -> HTML and PDF.

`build_report` runs the four stages (collect, stats, figures, render) and writes
`report.html`, `report.pdf` and `figures/` into the output folder. Everything is first written
into a temporary folder beside it and moved into place at the end, so a report that fails
half-way leaves nothing half-written, and an earlier report stays as it was: the output folder
holds either the whole earlier report or the whole new one. A folder that cannot be written
(a file in the way, no permission, a full disk) is a UserError naming it.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from mlflow import MlflowClient

import harness
from harness.errors import UserError
from harness.report import stats
from harness.report.collect import Experiment, collect, download_artifact
from harness.report.figures import FigureFile, draw_all, figure_count, metric_label
from harness.report.render import render_html, write_pdf

FORMATS = ("html", "pdf")
REPORT_NAMES = ("report.html", "report.pdf", "figures")  # what a report puts in its folder


@dataclass(frozen=True)
class ReportFiles:
    folder: Path
    files: list[Path]
    seconds: dict[str, float]  # per stage


class Progress:
    """What build_report tells about its stages: a no-op here, a Rich bar in the CLI."""

    @contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[Any]:
        yield lambda *args: None


def build_report(
    client: MlflowClient,
    experiment: str,
    out: Path,
    formats: tuple[str, ...] = FORMATS,
    ui_url: str = "http://127.0.0.1:5000",
    progress: Progress | None = None,
) -> ReportFiles:

    progress = progress or Progress()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with progress.stage("reading MLflow") as step:
        exp = collect(client, experiment, ui_url, progress=lambda done, total: step(done, total))
    timings["collect"] = time.perf_counter() - started

    started = time.perf_counter()
    scored = stats.scores(exp)
    table = stats.results_table(exp, scored)
    tests = stats.comparisons(exp, scored)
    winners = stats.winners(exp, table, scored, tests)
    ranking = stats.ranking(table, scored)
    friedman = stats.friedman(table, ranking)
    ratios = stats.profile_ratios(table)
    finite = ratios.to_numpy(dtype=float)[np.isfinite(ratios.to_numpy(dtype=float))]
    top = max(2.0, float(finite.max()) * 1.25) if finite.size else 2.0
    profile = stats.performance_profile(ratios, np.geomspace(1.0, top, 200))
    timings["stats"] = time.perf_counter() - started

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    except OSError as err:
        raise UserError(_cannot_write(out, err)) from None
    try:
        started = time.perf_counter()
        cd = friedman.get("cd") if friedman.get("significant") else None  # groups only then
        with progress.stage("drawing figures", figure_count(exp, table)) as step:
            figures = draw_all(exp, table, profile, work / "figures", step=lambda: step(1),
                               ranked=ranking, cd=cd)  # fmt: skip
        gallery = _gallery(client, exp, table, work / "figures")
        timings["figures"] = time.perf_counter() - started

        started = time.perf_counter()
        context = _context(exp, table, tests, winners, ranking, figures, gallery)
        context |= _statistics_context(scored, table, tests, winners, friedman)
        html = render_html(context)
        files = []
        if "html" in formats:
            (work / "report.html").write_text(html, encoding="utf-8")
            files.append("report.html")
        timings["html"] = time.perf_counter() - started
        if "pdf" in formats:
            started = time.perf_counter()
            with progress.stage("writing the PDF"):
                write_pdf(html, work / "report.pdf")
            files.append("report.pdf")
            timings["pdf"] = time.perf_counter() - started
        _replace(work, out, ["figures", *files])
    except OSError as err:
        raise UserError(_cannot_write(out, err)) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ReportFiles(out, [out / f for f in files] + [out / "figures"], timings)


def check_out_folder(out: Path, what: str = "--out") -> None:
    """Before any work: `out` is, or can be made, a folder this process can write in."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{what} {out}: exists and is not a folder")
    existing = next(p for p in (out, *out.parents) if p.exists())  # "." or "/" at the latest
    if not existing.is_dir():
        raise UserError(f"{what} {out}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what} {out}: no permission to write in {existing}")


def _cannot_write(out: Path, err: OSError) -> str:
    where = f" ({err.filename})" if err.filename else ""
    return f"cannot write the report to {out}: {err.strerror or err}{where}"


def _replace(work: Path, out: Path, names: list[str]) -> None:
    """Move the finished report's `names` from `work` into `out`, all or nothing.

    The earlier report's files (every name of REPORT_NAMES, so no stale PDF stays beside a new
    HTML) are first moved aside into `work`; if any move fails or is interrupted, what was moved
    is moved back, so `out` never holds a mix of the two reports. Renames within one file
    system: each step is atomic.
    """
    out.mkdir(parents=True, exist_ok=True)
    previous = work / ".previous"
    previous.mkdir()
    moved: list[tuple[Path, Path]] = []  # (from, to), in order
    try:
        for name in REPORT_NAMES:
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


def _gallery(client: MlflowClient, exp: Experiment, table: pd.DataFrame, folder: Path) -> list:
    """Attention maps of the representative runs, saved as figures/attention-TASK-KIND.png."""
    items = []
    with tempfile.TemporaryDirectory() as scratch:
        for rep in stats.representative_runs(exp, table).itertuples():
            local = download_artifact(client, rep.run_id, "attention_maps.png", scratch)
            if local:
                path = folder / _safe_name(f"attention-{rep.task}-{rep.attention}.png")
                shutil.move(local, path)
                items.append({**rep._asdict(), "path": path})
    return items


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# --------------------------------------------------------------------------- the template's data


def _context(
    exp: Experiment,
    table: pd.DataFrame,
    tests: pd.DataFrame,
    winners: pd.DataFrame,
    ranking: pd.DataFrame,
    figures: list[FigureFile],
    gallery: list,
) -> dict[str, Any]:
    runs = exp.runs
    parent = exp.parent
    problems = runs[runs.current & (runs.outcome.isin(["failed", "killed", "diverged"]))]
    grid_name = parent.get("tags", {}).get("harness.grid") or ", ".join(runs.phase.unique())
    return {
        "title": f"Attention × optimizer comparison: {exp.name}",
        "experiment": {"name": exp.name, "id": exp.id},
        "grid_name": grid_name if parent else "(no grid: runs from harness train)",
        "protocol": parent.get("params", {}).get("protocol", "unknown"),
        "question": _grid_description(parent.get("grid_yaml")),
        "counts": {
            "final": int((exp.final.phase == "final").sum()),
            "tune": len(exp.tune),
            "problems": len(problems),
            "missing": len(exp.missing),
        },
        "tasks": list(dict.fromkeys(table.task)),
        "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "version": harness.__version__,
        "winners": [_winner(w, table) for w in winners.itertuples()],
        "ranking": ranking.to_dict("records"),
        "results": _results(table),
        "figure_groups": _figure_groups(figures, table, exp),
        "gallery": gallery,
        "comparisons": _comparisons(tests),
        "alpha": stats.ALPHA,
        "failed": _failed(exp),
        "diverged": [
            {
                "run_name": r.run_name,
                "phase": r.phase,
                # a float column (NaN where a run did not diverge): shown as an integer step
                "step": None if pd.isna(r.diverged_at) else int(r.diverged_at),
                "url": exp.run_url(r.run_id),
            }
            for r in runs[runs.current & (runs.outcome == "diverged")].itertuples()
        ],
        "missing": exp.missing.assign(lr=exp.missing.lr.map(_lr)).to_dict("records"),
        "plan_known": exp.plan_known,
        "grid_yaml": parent.get("grid_yaml"),
        "environment": _environment(exp),
        "ui_hint": _ui_hint(exp.ui_url),
        "runs": [
            {
                "task": r.task,
                "config": stats.config_label(r),
                "seed": r.seed,
                "lr": _lr(r.lr),
                "outcome": r.outcome,
                "test": r.test,
                "run_id": r.run_id,
                "url": exp.run_url(r.run_id),
            }
            for r in exp.final.itertuples()
        ],
    }


def _grid_description(grid_yaml: str | None) -> str:
    """The grid's `description:` (what it asks), from the parent's grid.yaml; "" if none."""
    try:
        spec = yaml.safe_load(grid_yaml or "")
    except yaml.YAMLError:
        return ""
    text = spec.get("description") if isinstance(spec, dict) else None
    return " ".join(text.split()) if isinstance(text, str) else ""


def _lr(value: float | None) -> str:
    return "—" if value is None or pd.isna(value) else f"{value:g}"


def _sort(value: float) -> str:
    """A data-sort value: inf and NaN sort after every number."""
    return repr(float(value)) if np.isfinite(value) else "inf"


def _metric_text(row: Any) -> str:
    better = "higher" if row.higher_is_better else "lower"
    return f"{metric_label(row.metric)}, {better} is better"


def _winner(w: Any, table: pd.DataFrame) -> dict[str, Any]:
    first = table[table.task == w.task].iloc[0]
    return {**w._asdict(), "metric_text": _metric_text(first)}


def _results(table: pd.DataFrame) -> list[dict[str, Any]]:
    tasks = []
    for task, rows in table.groupby("task", sort=False):
        first = rows.iloc[0]
        best = set(stats.best_indices(rows))
        comparator = ">=" if first.higher_is_better else "<="
        tasks.append(
            {
                "name": task,
                "anchor": _anchor(task),
                "metric_text": _metric_text(first),
                "target_text": f"{first.metric} {comparator} {first.target:g}",
                "has_sweep": bool((rows.sweep != "").any()),
                "runs_differ": bool((rows.runs != rows.n).any()),
                "facts": _task_facts(rows),
                "rows": [
                    {
                        **r._asdict(),
                        "best": i in best,
                        "mean_sort": _sort(r.mean),
                        "std_sort": _sort(r.std),
                        "ci_low_sort": _sort(r.ci_low),
                        "ci_high_sort": _sort(r.ci_high),
                        "n_params_text": _count(r.n_params),
                        "n_params_sort": _sort(r.n_params),
                        "ttt_steps_sort": _sort(r.ttt_steps),
                        "ttt_seconds_sort": _sort(r.ttt_seconds),
                        "tokens_sort": _sort(r.tokens_per_s),
                    }
                    for i, r in zip(rows.index, rows.itertuples(), strict=True)
                ],
            }
        )
    return tasks


def _count(value: float) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{int(value):,}"


def _span(values: pd.Series, fmt: Any) -> str:
    """One value, or "a – b" when configurations of the task differ; "not recorded" if none."""
    v = values.astype(float)
    v = v[np.isfinite(v)]
    if v.empty:
        return "not recorded"
    low, high = float(v.min()), float(v.max())
    return fmt(low) if low == high else f"{fmt(low)} – {fmt(high)}"


def _task_facts(rows: pd.DataFrame) -> str:
    """ "train 512, validation 104, test 104 examples; chance level 0.2500 (accuracy)"."""
    splits = ", ".join(
        f"{name} {_span(rows[column], _count)}"
        for name, column in (("train", "n_train"), ("validation", "n_val"), ("test", "n_test"))
    )
    chance = _span(rows.chance, lambda v: f"{v:.4f}")
    return f"examples: {splits}; chance level: {chance} ({rows.metric.iloc[0]})"


def _figure_groups(figures: list[FigureFile], table: pd.DataFrame, exp: Experiment) -> list:
    groups = []
    for task in dict.fromkeys(table.task):
        notes = []
        if not any(f.name == f"lr-{task}" for f in figures):
            notes.append(
                "No learning-rate sensitivity curve: this grid has no finished tuning runs for "
                "this task."
            )
        groups.append(
            {"title": task, "anchor": _anchor(task),
             "figures": [f for f in figures if f.task == task], "notes": notes}
        )  # fmt: skip
    across = [f for f in figures if f.task is None]
    notes = []
    if not any(f.name == "profiles" for f in across):
        notes.append("No performance profile: no configuration reached its task's target.")
    groups.append({"title": "Across tasks", "anchor": "across", "figures": across, "notes": notes})
    return groups


def _comparisons(tests: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for task, rows in tests.groupby("task", sort=False):
        records = [
            {**r, **{f"{k}_sort": _sort(r[k]) for k in ("p_seed", "p_boot", "p", "p_holm")}}
            for r in rows.to_dict("records")
        ]
        out.append({"name": task, "anchor": _anchor(task), "rows": records,
                    "m": int(rows.p.notna().sum())})  # fmt: skip
    return out


def _statistics_context(
    scored: stats.Scores,
    table: pd.DataFrame,
    tests: pd.DataFrame,
    winners: pd.DataFrame,
    friedman: dict[str, Any],
) -> dict[str, Any]:
    """What the template needs about the statistics beyond the tables."""
    lacking = table[table.interval.str.startswith(("seeds only", "seeds;", "none"))]
    return {
        "summary_sentences": stats.summary_sentences(table, tests, winners),
        "param_warnings": stats.parameter_warnings(table),
        "stat_notes": scored.notes,
        "no_outcomes": [stats.config_label(r) + f" ({r.task})" for r in lacking.itertuples()],
        "friedman": friedman,
        "n_boot": stats.N_BOOT,
        "boot_p_name": stats.BOOT_P_NAME,
        "exact_max": stats.EXACT_MAX_SEEDS,
    }


def _failed(exp: Experiment) -> list[dict[str, Any]]:
    runs = exp.runs
    done_cells = set(runs[runs.status == "FINISHED"].cell_id)
    bad = runs[runs.status.isin(["FAILED", "KILLED", "RUNNING"])]
    return [
        {"run_name": r.run_name, "phase": r.phase, "status": r.status, "error": r.error,
         "superseded": r.cell_id in done_cells, "url": exp.run_url(r.run_id)}
        for r in bad.itertuples()
    ]  # fmt: skip


def _environment(exp: Experiment) -> list[tuple[str, str]]:
    """Software, hardware and source, as the launcher recorded them."""
    env = exp.environment
    rows = [(k.removeprefix("env."), v) for k, v in sorted(env.items()) if k.startswith("env.")]
    if not rows:
        rows.append(("software and hardware", "not recorded by the launcher of these runs"))
    accelerators = sorted(set(exp.runs.accelerator) - {""})
    rows.append(("accelerator of the runs", ", ".join(accelerators) or "not recorded"))
    rows.append(("harness version", env.get("harness.version", "not recorded")))
    rows.append(("git commit", env.get("harness.git_commit", "not recorded")))
    return rows


def _ui_hint(ui_url: str) -> str:
    return f"{ui_url}; start it with `harness ui` when the store is a local file"


def _anchor(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower())
