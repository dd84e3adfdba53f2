"""`harness report`: MLflow -> pandas -> statistics -> figures -> HTML and PDF.

`build_report` is a pipeline of named stages, each a function in a module named for it:

    collect   (collect.py)   the experiment's runs, histories and per-example outcomes
    stats     (stats/)       scores, intervals, comparisons, winners, ranks, profiles
    figures   (figures.py)   every entry of FIGURES drawn, or a note saying why not
    context   (context.py)   the template's data
    render    (render.py)    one self-contained HTML file, and a PDF of it
    output    (output.py)    written into a temporary folder, then swapped in whole

It writes `report.html`, `report.pdf` and `figures/` into the output folder, and returns the
files with the seconds each stage took.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from harness.report.collect import collect
from harness.report.context import build_context
from harness.report.figures import Inputs, draw_figures, jobs
from harness.report.output import check_out_folder, replace, work_folder
from harness.report.render import render_html, write_pdf
from harness.report.stats import analyse
from harness.report.style import Style

FORMATS = ("html", "pdf")
__all__ = ["FORMATS", "Progress", "ReportFiles", "build_report", "check_out_folder"]


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
        with timed("html"):
            html = render_html(build_context(exp, numbers, drawn))
        files = []
        if "html" in formats:
            (work / "report.html").write_text(html, encoding="utf-8")
            files.append("report.html")
        if "pdf" in formats:
            with timed("pdf"), progress.stage("writing the PDF"):
                write_pdf(html, work / "report.pdf")
            files.append("report.pdf")
        replace(work, out, ["figures", *files])
    return ReportFiles(out, [out / f for f in files] + [out / "figures"], seconds)


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
