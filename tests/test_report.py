"""`harness report` on real grids: the HTML and PDF read back and checked against MLflow itself.

One small real grid (two synthetic tasks, two attention kinds, two optimizers, a tune phase and
three final seeds) is trained once for the module; the tests read its report and recompute
every number of the results tables straight from the runs (their metrics, params and
`test_outcomes.json` artifacts), with their own code. The statistics themselves are pinned on
synthetic runs in tests/test_stats.py.
"""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from pypdf import PdfReader
from scipy import stats as scipy_stats

from harness.cli import main
from harness.report import build_report
from harness.report.stats import training_seconds

SECTIONS = [
    "1. Summary",
    "2. Results",
    "3. Figures",
    "4. Statistical comparisons",
    "5. Failures, divergences and missing cells",
    "6. Appendix",
]
# One real tuned grid trained for the whole module (about 45 s on 2 cores): `make test-slow`.
# tests/test_stats.py covers the statistics and build_report on runs written directly.
pytestmark = pytest.mark.slow

GRID = {
    "name": "rep",
    "description": "Does multihead <b>beat</b> dot here?",
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


def _final_runs(client: MlflowClient, task: str, attention: str, optimizer: str) -> list:
    """A configuration's final runs, read from MLflow directly, in seed order."""
    exp = client.get_experiment_by_name("rep")
    query = (
        f"params.task = '{task}' and params.attention = '{attention}' and "
        f"params.optimizer = '{optimizer}' and tags.`harness.phase` = 'final' and "
        "attributes.status = 'FINISHED'"
    )
    runs = client.search_runs([exp.experiment_id], query, max_results=100)
    return sorted(runs, key=lambda r: int(r.data.params["seed"]))


def _score(run) -> float:
    """test/acc, or the task's chance level for a diverged run (the report's rule)."""
    if run.data.tags["harness.outcome"] == "diverged":
        return float(run.data.params["data.chance"])
    return run.data.metrics["test/acc"]


def _correct_rates(client: MlflowClient, runs: list, folder: Path) -> np.ndarray:
    """(runs, 2, examples): metric_sum and n_tokens of each run's test_outcomes.json (for
    accuracy, metric_sum counts the correct positions)."""
    rows = []
    for run in runs:
        local = client.download_artifacts(run.info.run_id, "test_outcomes.json", str(folder))
        outcomes = json.loads(Path(local).read_text())
        correct, tokens = np.array(outcomes["metric_sum"]), np.array(outcomes["n_tokens"])
        assert correct.sum() / tokens.sum() == pytest.approx(run.data.metrics["test/acc"])
        rows.append((correct, tokens))
    return np.array(rows, dtype=float)  # (runs, 2, examples)


def _two_stage_interval(outcomes: np.ndarray, draws: int = 4000) -> tuple[float, float]:
    """Our own interval: mean +- t_df sqrt(s^2 / n + v_test), v_test from an example-only
    bootstrap (seeds fixed), df by Welch-Satterthwaite; clipped to [0, 1]."""
    rng = np.random.default_rng(123)
    n_runs, _, n_ex = outcomes.shape
    scores = outcomes[:, 0].sum(axis=1) / outcomes[:, 1].sum(axis=1)
    means = np.empty(draws)
    for b in range(draws):
        picked = outcomes[:, :, rng.integers(0, n_ex, n_ex)].sum(axis=2)  # (runs, 2)
        means[b] = np.mean(picked[:, 0] / picked[:, 1])
    seed_part, test_part = np.var(scores, ddof=1) / n_runs, np.var(means, ddof=1)
    df = (seed_part + test_part) ** 2 / (seed_part**2 / (n_runs - 1)) if seed_part else np.inf
    half = scipy_stats.t.ppf(0.975, df) * np.sqrt(seed_part + test_part)
    return max(0.0, scores.mean() - half), min(1.0, scores.mean() + half)


# --------------------------------------------------------------------------- the tests


def test_every_number_of_the_results_table_is_recomputed_from_mlflow(
    grid_store: Path, report: Path, tmp_path: Path
) -> None:
    client = MlflowClient(f"sqlite:///{grid_store / 'mlflow.db'}")
    html = (report / "report.html").read_text()
    results = tables(html, "results")
    assert len(results) == 2  # one table per task
    seen = 0
    for table, task in zip(results, ["copy", "reverse"], strict=True):
        assert len(table) == 4  # 2 attention kinds x 2 optimizers
        for row in table:
            runs = _final_runs(client, task, row["attention"], row["optimizer"])
            scores = [_score(r) for r in runs]
            diverged = sum(r.data.tags["harness.outcome"] == "diverged" for r in runs)
            assert len(runs) == 3 and int(row["n"]) == 3 and int(row["diverged"]) == diverged
            assert row["mean"] == f"{np.mean(scores):.4f}"
            assert row["std"] == f"{np.std(scores, ddof=1):.4f}"
            assert row["params"] == f"{int(runs[0].data.params['model.n_params']):,}"
            if diverged == 0:  # our own two-stage interval agrees within Monte Carlo error
                assert row["interval"] == "seeds and test set"
                low, high = _two_stage_interval(_correct_rates(client, runs, tmp_path))
                slack = 0.005 + 0.35 * (high - low) / 2
                assert float(row["CI low"]) == pytest.approx(low, abs=slack)
                assert float(row["CI high"]) == pytest.approx(high, abs=slack)
            seen += 1
    assert seen == 8
    n_test = {r.data.params["data.n_test"] for r in _final_runs(client, "copy", "dot", "adam")}
    assert f"test {int(n_test.pop()):,}; chance level" in html


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
    assert (figures / "throughput.png").is_file() and (figures / "ranking.png").is_file()
    for task in ("copy", "reverse"):  # attention diagnostics, logged at step 0 and validations
        assert (figures / f"diagnostics-{task}.png").stat().st_size > 5000
    # 10 per-task figures + ranking + throughput
    assert html.count('src="data:image/png;base64,') >= 12
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
    # The grid's question heads the summary, escaped like every string from MLflow.
    summary_section = html[html.index('id="summary"') : html.index('id="results"')]
    assert "Does multihead &lt;b&gt;beat&lt;/b&gt; dot here?" in summary_section


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
    assert (row["n"], row["std"]) == ("1", "—")
    if row["diverged"] == "0":  # one seed: the interval is the test set's alone
        assert row["interval"] == "test set only (1 seed)"
        assert float(row["CI low"]) <= float(row["mean"]) <= float(row["CI high"])
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


def test_training_seconds_sums_step_windows() -> None:
    import pandas as pd

    # windows (0,10] at 5 ms/step, (10,20] at 7 ms/step
    points = pd.DataFrame({"step": [10, 20], "value": [5.0, 7.0]})
    assert training_seconds(points, 10) == pytest.approx(0.05)
    assert training_seconds(points, 15) == pytest.approx(0.05 + 5 * 0.007)
    assert training_seconds(points, 30) == pytest.approx(0.05 + 0.07 + 0.07)
