"""`harness report`: MLflow -> pandas -> statistics -> figures -> HTML and PDF.

`build_report` is a pipeline of named stages, each a function in a module named for it:

    collect   (collect.py)   the experiment's runs, histories and per-example outcomes
    stats     (stats/)       scores, intervals, comparisons, winners, ranks, profiles
    figures   (figures.py)   every entry of FIGURES drawn, or a note saying why not
    data      (export.py)    the results, comparisons and runs tables as files
    context   (context.py)   the template's data
    render    (render.py)    one self-contained HTML file, and a PDF of it
    output    (output.py)    written into a temporary folder, then swapped in whole

It writes `report.html`, `report.pdf`, `figures/` and the data files (`results.csv`, ...: see
export.py; the HTML links to them) into the output folder, and returns the files with the
seconds each stage took.

Called, this package is the Python API's `harness.report(experiment, out=...)` (harness.api:
the package and the function share the name `harness.report`, so the package is callable).
"""

from __future__ import annotations

import os
import sys
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from harness.report.collect import collect
from harness.report.context import build_context
from harness.report.export import DATA_NAMES, EXTENSIONS, tables, write_tables
from harness.report.figures import Inputs, draw_figures, jobs
from harness.report.output import REPORT_NAMES, check_out_folder, replace, work_folder
from harness.report.render import render_html, write_pdf
from harness.report.stats import analyse
from harness.report.style import Style

FORMATS = ("html", "pdf")
__all__ = ["FORMATS", "Progress", "ReportFiles", "build_report", "check_out_folder"]


@dataclass(frozen=True)
class ReportFiles:
    folder: Path
    files: list[Path]  # report.html, report.pdf (as asked), figures/
    seconds: dict[str, float]  # per stage
    data: list[Path] = field(default_factory=list)  # results.csv, ... (harness.report.export)


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
    seconds: dict[str, float] = {}
    timed = _stopwatch(seconds)

    with timed("collect"), progress.stage("reading MLflow") as step:
        exp = collect(client, experiment, ui_url, progress=lambda done, total: step(done, total))
    with timed("stats"):
        numbers = analyse(exp)
    with work_folder(out) as work:
        inputs = Inputs(exp, numbers, Style.of(exp.order, exp.runs.attention), client, work)
        with timed("figures"), progress.stage("drawing figures", len(jobs(inputs))) as step:
            drawn = draw_figures(inputs, work / "figures", step=lambda: step(1))
        with timed("data"):
            data = tables(exp, numbers.table, numbers.tests)
            data_files = write_tables(data, work, EXTENSIONS, title=experiment)
        with timed("html"):
            context = build_context(exp, numbers, drawn) | {"downloads": downloads(data_files)}
            html = render_html(context)
        files = []
        if "html" in formats:
            (work / "report.html").write_text(html, encoding="utf-8")
            files.append("report.html")
        if "pdf" in formats:
            with timed("pdf"), progress.stage("writing the PDF"):
                write_pdf(html, work / "report.pdf")
            files.append("report.pdf")
        replace(work, out, ["figures", *files, *data_files], aside=[*REPORT_NAMES, *DATA_NAMES])
    made = [out / f for f in (*files, "figures")]
    return ReportFiles(out, made, seconds, [out / f for f in data_files])


def downloads(names: list[str]) -> list[dict[str, Any]]:
    """The data files for the report's download links: per table, its files by format."""
    labels = {"csv": "CSV", "parquet": "Parquet", "json": "JSON", "tex": "LaTeX"}
    out: dict[str, list[dict[str, str]]] = {}
    for name in names:
        table, _, ext = name.partition(".")
        out.setdefault(table, []).append({"label": labels.get(ext, ext), "href": name})
    return [{"table": table, "files": files} for table, files in out.items()]


def _stopwatch(seconds: dict[str, float]) -> Any:
    """`with timed(name):` adds the block's wall time to seconds[name]."""

    @contextmanager
    def timed(name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started

    return timed


class _CallablePackage(types.ModuleType):
    """`harness.report("quick", out=...)`: harness.api.report, through the package's name."""

    def __call__(
        self, experiment: str, out: str | os.PathLike[str] | None = None, **options: Any
    ) -> list[Path]:
        from harness.api import report

        return report(experiment, out, **options)


sys.modules[__name__].__class__ = _CallablePackage
