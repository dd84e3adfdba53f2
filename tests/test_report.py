"""`harness report` on real grids: the HTML and PDF read back and checked against MLflow itself.

One small real grid (two synthetic tasks, two attention kinds, two optimizers, a tune phase and
three final seeds) is trained once for the module; the tests read its report and recompute
every number of the results tables straight from the runs, with their own code.
"""

from __future__ import annotations

import math
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from pypdf import PdfReader
from scipy import stats as st

from harness.cli import main
from harness.report import build_report
from harness.report.stats import holm, mean_ci, training_seconds, welch_p

SECTIONS = [
    "1. Summary",
    "2. Results",
    "3. Figures",
    "4. Statistical comparisons",
    "5. Failures, divergences and missing cells",
    "6. Appendix",
]
GRID = {
    "name": "rep",
    "protocol": "tune_then_final",
    "tasks": [
        {"name": "copy", "params": {"length": 4, "n_train": 512}},
        {"name": "reverse", "params": {"length": 4, "n_train": 512}},
    ],
    "attention": ["dot", "multihead"],
    "optimizers": [{"name": "adam", "lr_grid": [0.003, 0.01]}, {"name": "sgd", "lr_grid": [0.1]}],
    "seeds": {"tune": [0], "final": [1, 2, 3]},
    "model": {"d_model": 16, "d_ff": 32, "d_k": 8, "n_layers": 1},
    "train": {"batch_size": 32},
    "budget": {"steps": 40, "val_every": 20},
}


# --------------------------------------------------------------------------- reading files back


class Tables(HTMLParser):
    """Every <table> of a page: its class and its rows of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[tuple[str, list[list[str]]]] = []
        self._cell: list[str] | None = None
        self._row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self.tables.append((dict(attrs).get("class") or "", []))
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1][1].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def tables(html: str, css_class: str) -> list[list[dict[str, str]]]:
    """The tables with `css_class`, each as a list of {heading: text} rows."""
    parser = Tables()
    parser.feed(html)
    out = []
    for classes, rows in parser.tables:
        if css_class in classes.split():
            header, *body = rows
            out.append([dict(zip(header, row, strict=True)) for row in body])
    return out


def pdf_text(path: Path) -> tuple[PdfReader, str]:
    reader = PdfReader(path)
    return reader, "\n".join(page.extract_text() for page in reader.pages)


# --------------------------------------------------------------------------- the grid, once


@pytest.fixture(scope="module")
def grid_store(_template_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding the trained `rep` grid (artifacts beside it, in its folder)."""
    folder = tmp_path_factory.mktemp("rep")
    shutil.copy(_template_store, folder / "mlflow.db")
    (folder / "rep.yaml").write_text(yaml.safe_dump(GRID))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        code = main(["run", "rep.yaml", "--tracking-uri", uri, "--workers", "2", "--no-progress"])
    assert code == 0
    return folder


@pytest.fixture(scope="module")
def report(grid_store: Path) -> Path:
    out = grid_store / "reports" / "rep"
    uri = f"sqlite:///{grid_store / 'mlflow.db'}"
    assert main(["report", "rep", "--tracking-uri", uri, "--out", str(out), "--no-progress"]) == 0
    return out


def _final_scores(client: MlflowClient, task: str, attention: str, optimizer: str) -> list[float]:
    """The test scores of a configuration's final runs, read from MLflow directly."""
    exp = client.get_experiment_by_name("rep")
    query = (
        f"params.task = '{task}' and params.attention = '{attention}' and "
        f"params.optimizer = '{optimizer}' and tags.`harness.phase` = 'final' and "
        "attributes.status = 'FINISHED'"
    )
    runs = client.search_runs([exp.experiment_id], query, max_results=100)
    return [r.data.metrics["test/acc"] for r in runs if r.data.tags["harness.outcome"] == "ok"]


# --------------------------------------------------------------------------- the tests


def test_every_number_of_the_results_table_is_recomputed_from_mlflow(
    grid_store: Path, report: Path
) -> None:
    client = MlflowClient(f"sqlite:///{grid_store / 'mlflow.db'}")
    html = (report / "report.html").read_text()
    results = tables(html, "results")
    assert len(results) == 2  # one table per task
    seen = 0
    for table, task in zip(results, ["copy", "reverse"], strict=True):
        assert len(table) == 4  # 2 attention kinds x 2 optimizers
        for row in table:
            scores = _final_scores(client, task, row["attention"], row["optimizer"])
            n = len(scores)
            assert n == 3 and int(row["n"]) == n and int(row["runs"]) == 3
            mean = float(np.mean(scores))
            half = st.t.ppf(0.975, n - 1) * np.std(scores, ddof=1) / math.sqrt(n)
            assert row["mean"] == f"{mean:.4f}"
            assert row["std"] == f"{np.std(scores, ddof=1):.4f}"
            assert row["CI low"] == f"{mean - half:.4f}"
            assert row["CI high"] == f"{mean + half:.4f}"
            seen += 1
    assert seen == 8


def test_the_lr_column_is_the_rate_tuning_chose(grid_store: Path, report: Path) -> None:
    client = MlflowClient(f"sqlite:///{grid_store / 'mlflow.db'}")
    exp = client.get_experiment_by_name("rep")
    runs = client.search_runs([exp.experiment_id], "tags.`harness.phase` = 'final'")
    for row in tables((report / "report.html").read_text(), "results")[0]:
        rates = {
            r.data.params["lr"]
            for r in runs
            if r.data.params["task"] == "copy"
            and r.data.params["attention"] == row["attention"]
            and r.data.params["optimizer"] == row["optimizer"]
        }
        assert {f"{float(x):g}" for x in rates} == {row["lr"]}


def test_pdf_has_title_page_sections_and_the_same_numbers(report: Path) -> None:
    reader, text = pdf_text(report / "report.pdf")
    first = " ".join(reader.pages[0].extract_text().split())
    assert "Attention × optimizer comparison: rep" in first and "page " not in first
    assert "page 2 of" in reader.pages[1].extract_text()
    for heading in SECTIONS:
        assert heading in text, heading
    html = (report / "report.html").read_text()
    flat = " ".join(text.split())
    for table in tables(html, "results"):
        for row in table:
            for column in ("mean", "std", "CI low", "CI high"):
                assert row[column] in flat, (column, row[column])


def test_figures_exist_for_every_task_and_are_embedded(report: Path) -> None:
    figures = report / "figures"
    html = (report / "report.html").read_text()
    for task in ("copy", "reverse"):
        for kind in ("heatmap", "ci", "curves", "lr"):
            path = figures / f"{kind}-{task}.png"
            assert path.stat().st_size > 5000, path
            assert f'id="fig-{kind}-{task}"' in html
    assert (figures / "throughput.png").is_file()
    assert html.count('src="data:image/png;base64,') >= 9  # 8 per-task figures + throughput
    assert 'src="figures/' not in html  # self-contained: nothing read from disk
    # the attention-map gallery: one median run per task x attention kind, from MLflow
    assert len(list(figures.glob("attention-*.png"))) == 4


def test_summary_names_a_winner_per_task_and_the_appendix_links_every_run(
    grid_store: Path, report: Path
) -> None:
    html = (report / "report.html").read_text()
    (summary,) = tables(html, "summary")
    assert [row["task"] for row in summary] == ["copy", "reverse"]
    for row in summary:
        assert " + " in row["winner"] and int(row["n"]) == 3
    (runs,) = tables(html, "runs")
    client = MlflowClient(f"sqlite:///{grid_store / 'mlflow.db'}")
    exp = client.get_experiment_by_name("rep")
    final = client.search_runs([exp.experiment_id], "tags.`harness.phase` = 'final'")
    assert sorted(row["run id"] for row in runs) == sorted(r.info.run_id for r in final)
    for run in final:
        assert f"#/experiments/{exp.experiment_id}/runs/{run.info.run_id}" in html
    assert "name: rep" in html and "protocol: tune_then_final" in html  # the grid spec


def _copy_of(grid_store: Path, tmp_path: Path) -> tuple[MlflowClient, object]:
    """A copy of the grid's store for a test that changes it (artifacts stay shared)."""
    shutil.copy(grid_store / "mlflow.db", tmp_path / "mlflow.db")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return client, client.get_experiment_by_name("rep")


def test_a_run_named_like_markup_is_shown_as_text(grid_store: Path, tmp_path: Path) -> None:
    client, exp = _copy_of(grid_store, tmp_path)
    evil = "<script>alert(1)</script>"
    tags = {"harness.cell_id": "evil", "harness.phase": "final", "harness.grid": "rep",
            "harness.error": '<img src=x onerror="alert(2)">'}  # fmt: skip
    run = client.create_run(exp.experiment_id, run_name=evil, tags=tags)
    client.log_param(run.info.run_id, "task", "<b>copy</b>")
    client.set_terminated(run.info.run_id, "FAILED")
    out = tmp_path / "out"
    build_report(client, "rep", out)
    html = (out / "report.html").read_text()
    assert evil not in html and "<img src=x" not in html and "<b>copy</b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "onerror=&#34;alert(2)&#34;" in html
    _, text = pdf_text(out / "report.pdf")
    assert evil in text  # the PDF shows the name as written, as text


def test_a_partial_grid_reports_what_exists_and_lists_what_is_missing(
    grid_store: Path, tmp_path: Path
) -> None:
    client, exp = _copy_of(grid_store, tmp_path)
    query = "params.task = 'reverse' and params.attention = 'dot' and params.optimizer = 'sgd'"
    doomed = client.search_runs([exp.experiment_id], query + " and tags.`harness.phase` = 'final'")
    assert len(doomed) == 3
    for run in doomed[:2]:
        client.delete_run(run.info.run_id)
    out = tmp_path / "out"
    build_report(client, "rep", out, formats=("html",))
    html = (out / "report.html").read_text()
    assert "Partial results: 2 planned cell(s)" in html
    (missing,) = tables(html, "missing")
    assert (
        sorted((m["group"], m["phase"], m["state"]) for m in missing)
        == [("reverse/dot/sgd", "final", "never started")] * 2
    )
    assert sorted(m["seed"] for m in missing) == sorted(r.data.params["seed"] for r in doomed[:2])
    reverse = tables(html, "results")[1]
    row = next(r for r in reverse if (r["attention"], r["optimizer"]) == ("dot", "sgd"))
    assert (row["n"], row["runs"], row["std"], row["CI low"]) == ("1", "1", "—", "—")
    assert not (out / "report.pdf").exists()


@pytest.mark.parametrize("setup", ["unknown", "empty"])
def test_unknown_or_empty_experiment_exits_2_and_writes_nothing(
    tracking_uri: str, client: MlflowClient, tmp_path: Path, capsys, setup: str
) -> None:
    if setup == "empty":
        client.create_experiment("nothing-here")
    name = "nothing-here" if setup == "empty" else "no-such"
    out = tmp_path / "reports" / name
    assert main(["report", name, "--tracking-uri", tracking_uri, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and name in err and len(err.splitlines()) == 1
    assert not (tmp_path / "reports").exists()


def test_a_bad_format_exits_2(tracking_uri: str, capsys) -> None:
    assert main(["report", "x", "--tracking-uri", tracking_uri, "--format", "docx"]) == 2
    assert "--format" in capsys.readouterr().err


# --------------------------------------------------------------------------- the statistics


def test_mean_ci_is_students_t() -> None:
    mean, low, high = mean_ci([1.0, 2.0, 3.0, 4.0])
    # mean 2.5, s = 1.2910, t(0.975, 3) = 3.1824 -> half-width 2.0543
    assert mean == 2.5 and low == pytest.approx(0.4457, abs=1e-4)
    assert high == pytest.approx(4.5543, abs=1e-4)
    assert math.isnan(mean_ci([0.7])[1]) and math.isnan(mean_ci([])[0])


def test_holm_steps_down_and_keeps_nan_out_of_the_family() -> None:
    # Holm 1979: sorted p 0.01, 0.02, 0.04 with m = 3 -> 0.03, 0.04, 0.04 (monotone)
    assert holm([0.04, 0.01, math.nan, 0.02]) == pytest.approx([0.04, 0.03, math.nan, 0.04],
                                                                nan_ok=True)  # fmt: skip
    assert holm([0.9, 0.8]) == [1.0, 1.0]


def test_welch_p_matches_the_textbook_and_handles_no_spread() -> None:
    a, b = [0.9, 0.92, 0.95], [0.7, 0.75, 0.8]
    assert welch_p(a, b) == pytest.approx(st.ttest_ind(a, b, equal_var=False).pvalue)
    assert welch_p([1.0, 1.0], [1.0, 1.0]) == 1.0 and welch_p([1.0, 1.0], [0.5, 0.5]) == 0.0
    assert math.isnan(welch_p([1.0], [0.5, 0.6]))


def test_training_seconds_sums_step_windows() -> None:
    import pandas as pd

    # windows (0,10] at 5 ms/step, (10,20] at 7 ms/step
    points = pd.DataFrame({"step": [10, 20], "value": [5.0, 7.0]})
    assert training_seconds(points, 10) == pytest.approx(0.05)
    assert training_seconds(points, 15) == pytest.approx(0.05 + 5 * 0.007)
    assert training_seconds(points, 30) == pytest.approx(0.05 + 0.07 + 0.07)
