"""Results as data and the Python API: `harness export`, the report's data files, and
`harness.run_grid`, `load_runs`, `results`, `report`, on real stores read back.

Most tests use experiments written straight into MLflow in the run schema
(tests/faults/_reports.py: no training, a second each). One tiny real grid, trained once for the
module by the README's own Python example run verbatim, backs the tests that need real runs
(intervals from per-example test outcomes, parameter counts, the hyper-parameter columns).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from faults._reports import CONFIGS, SEEDS, make_experiment, report_files
from mlflow import MlflowClient

import harness
from harness.cli import main
from harness.errors import UserError
from harness.report.collect import RUN_COLUMNS
from harness.report.export import DATA_NAMES, LATEX_COLUMNS
from harness.report.stats.comparisons import COMPARISON_COLUMNS
from harness.report.stats.table import RESULT_COLUMNS

README = Path(__file__).parents[1] / "README.md"
# What the README's example trains here: a grid named like the demo, 4 cells of 10 steps.
TINY_QUICK = {
    "name": "quick",
    "protocol": "fixed",
    "tasks": [{"name": "copy", "params": {"length": 4, "n_train": 64}, "steps": 10}],
    "attention": ["dot", "scaled_dot"],
    "optimizers": ["adam"],
    "seeds": [0, 1],
    "budget": {"val_every": 5},
    "model": {"d_model": 16, "d_ff": 32, "n_layers": 1, "d_k": 8},
}
ALL_FORMATS = "csv,parquet,latex,json"


# --------------------------------------------------------------------------- reading files back


def readme_example() -> str:
    """The README's one Python block that calls harness.run_grid."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (code,) = [b for b in blocks if "harness.run_grid" in b]
    return code


def html_results(html: str) -> list[dict[str, str]]:
    """Every row of the report's results tables, as {heading: text}."""
    rows = []
    for table in re.findall(r'<table class="results[^"]*"[^>]*>(.*?)</table>', html, flags=re.S):
        cells = [
            [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", r)]
            for r in re.findall(r"<tr[^>]*>(.*?)</tr>", table, flags=re.S)
        ]
        header, *body = cells
        rows += [dict(zip(header, row, strict=True)) for row in body]
    return rows


def check_latex(text: str, columns: list[str]) -> list[list[str]]:
    """A tabular a minimal LaTeX document compiles: one tabular, its column spec as wide as
    every row, rows ended by \\\\, no special character unescaped; the cells, header first."""
    assert text.count("\\begin{tabular}") == 1 and text.count("\\end{tabular}") == 1
    spec = re.search(r"\\begin\{tabular\}\{([lrc]+)\}", text)
    assert spec, text
    body = text[spec.end() : text.index("\\end{tabular}")]
    lines = [line for line in body.strip().splitlines() if line != "\\hline"]
    rows = []
    for line in lines:
        assert line.endswith("\\\\"), line
        cells = re.split(r"(?<!\\)&", line[:-2])
        assert len(cells) == len(spec.group(1)), line
        for cell in cells:  # every special character escaped: _ & % $ # { } (~ ^ \\ as words)
            assert not re.search(r"(?<!\\)[_&%$#{}~^]", cell), cell
        rows.append([c.strip() for c in cells])
    unescape = {"\\_": "_", "\\&": "&", "\\%": "%", "\\$": "$", "\\#": "#"}
    header = [re.sub(r"\\[_&%$#]", lambda m: unescape[m.group(0)], c) for c in rows[0]]
    assert header == columns
    return rows


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------- fast: runs written


def test_export_writes_every_table_in_every_format(
    client: MlflowClient, tracking_uri: str, tmp_path: Path, capsys
) -> None:
    make_experiment(client, "exp", sweep={"model.d_k": 16})
    assert main(["export", "exp", "--tracking-uri", tracking_uri, "--format", ALL_FORMATS]) == 0
    out = tmp_path / "reports" / "exp"
    printed = capsys.readouterr().out.split()
    assert sorted(printed) == sorted(str(Path("reports/exp") / n) for n in DATA_NAMES)
    assert report_files(out) == set(DATA_NAMES)  # runs.tex is not written: see export.py
    assert "runs.tex" not in DATA_NAMES and len(DATA_NAMES) == 11

    results = pd.read_parquet(out / "results.parquet")
    tests = pd.read_parquet(out / "comparisons.parquet")
    runs = pd.read_parquet(out / "runs.parquet")
    assert list(results.columns) == [
        *(c for c in RESULT_COLUMNS if c != "sweep_values"),
        "model.d_k",
    ]
    assert list(tests.columns) == COMPARISON_COLUMNS
    kept = [c for c in RUN_COLUMNS if c not in ("params", "sweep_values", "attn_keys")]
    assert list(runs.columns) == [*kept, "current"]
    assert len(results) == len(CONFIGS) and len(runs) == len(CONFIGS) * len(SEEDS)
    assert results["model.d_k"].tolist() == [16] * len(CONFIGS)
    # the means are the runs' test accuracies (make_experiment: level + 0.01 seed), by config
    for attention, optimizer, level in CONFIGS:
        row = results[(results.attention == attention) & (results.optimizer == optimizer)]
        assert row["mean"].item() == pytest.approx(level + 0.01 * np.mean(SEEDS))
        assert row["n"].item() == len(SEEDS) and row["lr"].item() == 0.001
        ids = set(row["run_ids"].item().split())
        assert ids == set(
            runs[(runs.attention == attention) & (runs.optimizer == optimizer)].run_id
        )

    # CSV and JSON hold the same numbers; JSON's missing values are null, never NaN
    csv = pd.read_csv(out / "results.csv")
    assert np.allclose(csv["mean"], results["mean"]) and np.allclose(csv.ci_low, results.ci_low)
    text = (out / "results.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    records = json.loads(text)
    assert [r["mean"] for r in records] == results["mean"].tolist()  # to the last digit
    assert [r["ci_low"] for r in records] == results.ci_low.tolist()
    assert all(r["chance"] is None for r in records)  # make_experiment records no chance level
    never = [r for r in records if r["reached"] == 0]
    assert never and all(r["ttt_steps"] is None for r in never)  # never reached: inf -> null
    started = json.loads((out / "runs.json").read_text())[0]["start_time"]
    assert dt.datetime.fromisoformat(started) == runs.start_time[0]  # ISO 8601, UTC
    check_latex((out / "results.tex").read_text(), [*LATEX_COLUMNS["results"]])
    check_latex((out / "comparisons.tex").read_text(), [*LATEX_COLUMNS["comparisons"]])


def test_latex_escapes_names_and_has_as_many_cells_as_headings(
    client: MlflowClient, tracking_uri: str, tmp_path: Path
) -> None:
    """A task named with every LaTeX special character: escaped in every cell; no sweep, so no
    sweep column."""
    make_experiment(client, "exp", task="my_task&50%$#{x}~^")
    assert main(["export", "exp", "--tracking-uri", tracking_uri, "--format", "latex"]) == 0
    out = tmp_path / "reports" / "exp"
    assert report_files(out) == {"results.tex", "comparisons.tex"}
    text = (out / "results.tex").read_text()
    columns = [c for c in LATEX_COLUMNS["results"] if c != "sweep"]
    rows = check_latex(text, columns)
    assert len(rows) == 1 + len(CONFIGS)
    assert rows[1][0] == r"my\_task\&50\%\$\#\{x\}\textasciitilde \textasciicircum"
    assert "my_task" not in text.replace(r"my\_task", "")
    tests = check_latex((out / "comparisons.tex").read_text(),
                        [c for c in LATEX_COLUMNS["comparisons"] if c != "sweep"])  # fmt: skip
    assert len(tests) == 1 + 2  # dot vs multihead within adam, adam vs sgd within dot


def test_export_means_are_the_reports_means(
    client: MlflowClient, tracking_uri: str, tmp_path: Path
) -> None:
    make_experiment(client, "exp")
    report, export = tmp_path / "report", tmp_path / "export"
    argv = ["--tracking-uri", tracking_uri, "--out"]
    assert main(["report", "exp", *argv, str(report), "--format", "html", "--no-progress"]) == 0
    assert main(["export", "exp", *argv, str(export), "--format", "parquet"]) == 0
    table = pd.read_parquet(export / "results.parquet")
    shown = html_results((report / "report.html").read_text())
    assert len(shown) == len(table) == len(CONFIGS)
    for row in shown:
        mine = table[(table.attention == row["attention"]) & (table.optimizer == row["optimizer"])]
        assert row["mean"] == f"{mine['mean'].item():.4f}"
        assert row["CI low"] == f"{mine.ci_low.item():.4f}"
        assert row["CI high"] == f"{mine.ci_high.item():.4f}"
    # the report's own data files are the same tables, and its HTML links to every one
    for name in ("results", "comparisons", "runs"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(report / f"{name}.parquet"), pd.read_parquet(export / f"{name}.parquet")
        )
    html = (report / "report.html").read_text()
    links = re.findall(r'<a href="([^"#:]+)">', html)
    assert sorted(links) == sorted(DATA_NAMES) and all((report / link).is_file() for link in links)


def test_export_beside_a_report_replaces_only_its_own_files(
    client: MlflowClient, tracking_uri: str, tmp_path: Path
) -> None:
    """An export into a report's folder rewrites its own files (a stale CSV included) and
    leaves the report and the other formats as they were."""
    make_experiment(client, "exp")
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    for name in ("report.html", "figures/heatmap-copy.png", "results.csv", "results.parquet"):
        (out / name).write_text("earlier")
    files = report_files(out)
    assert main(["export", "exp", "--tracking-uri", tracking_uri, "--out", str(out)]) == 0
    assert report_files(out) == files | {"comparisons.csv", "runs.csv"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder
    assert (out / "results.csv").read_text().startswith("task,sweep,attention")
    for name in ("report.html", "figures/heatmap-copy.png", "results.parquet"):
        assert (out / name).read_text() == "earlier"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["export", "exp", "--format", "xlsx"], "--format 'xlsx': choose from csv, parquet"),
        (["export", "exp", "--format", ","], "--format ','"),
        (["export", "nope"], "no experiment 'nope'"),
        (["export", "exp", "--out", "blocker/x"], "blocker is a file, not a folder"),
    ],
    ids=["format", "no-format", "experiment", "out"],
)
def test_bad_export_input_exits_2_and_writes_nothing(
    client: MlflowClient, tracking_uri: str, tmp_path: Path, capsys, argv: list[str], needle: str
) -> None:
    make_experiment(client, "exp")
    (tmp_path / "blocker").write_text("a file")
    before = report_files(tmp_path)
    assert main([*argv, "--tracking-uri", tracking_uri]) == 2
    assert needle in _one_error_line(capsys)
    assert report_files(tmp_path) == before


def test_reading_functions_raise_user_errors(
    tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(UserError, match="no experiment 'nope'"):
        harness.results("nope", tracking_uri=tracking_uri)
    with pytest.raises(UserError, match="no experiment 'nope'"):
        harness.load_runs("nope")  # tracking_uri None: sqlite:///mlflow.db here, as the CLI's
    with pytest.raises(UserError, match="no store at"):
        harness.load_runs("quick", tracking_uri=f"sqlite:///{tmp_path}/none.db")
    with pytest.raises(UserError, match="--format 'docx'"):
        harness.report("nope", formats=["docx"], tracking_uri=tracking_uri)
    assert not (tmp_path / "none.db").exists() and not (tmp_path / "reports").exists()


def test_the_api_loads_nothing_heavy_until_called() -> None:
    """`import harness` and reaching its functions import neither torch nor MLflow nor pandas
    (`harness --help` stays fast); `harness.report` is the report package, callable."""
    code = (
        "import sys, harness; fns = [harness.run_grid, harness.load_runs, harness.results, "
        "harness.export]; print(sorted({'torch', 'mlflow', 'pandas'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert callable(harness.report) and harness.report.build_report.__module__ == "harness.report"


def test_the_default_store_is_the_working_folders_at_each_call(
    _template_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow keeps one store per URI in a process: a notebook that changes folder must not go
    on reading the first folder's mlflow.db."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        shutil.copy(_template_store, tmp_path / name / "mlflow.db")
        make_experiment(MlflowClient(f"sqlite:///{tmp_path / name / 'mlflow.db'}"), f"exp-{name}")
    for name in ("a", "b"):
        monkeypatch.chdir(tmp_path / name)
        assert len(harness.load_runs(f"exp-{name}")) == len(CONFIGS) * len(SEEDS)
        assert len(harness.results(f"exp-{name}")) == len(CONFIGS)


@pytest.mark.parametrize(
    ("grid", "options", "needle"),
    [
        ({**TINY_QUICK, "optimizers": ["adamm"]}, {}, "optimizers[0]: unknown optimizer 'adamm'"),
        (TINY_QUICK, {"sets": {"model.d_model": "big"}}, "--set model.d_model='big'"),
        (TINY_QUICK, {"sets": {"nope": 1}}, "--set nope: unknown key"),
        (TINY_QUICK, {"workers": 0}, "--workers 0: must be >= 1"),
        (TINY_QUICK, {"backend": "slurm"}, "--backend 'slurm'"),
        (TINY_QUICK, {"accelerator": "tpu"}, "--accelerator 'tpu'"),
        (TINY_QUICK, {"experiment": "../x"}, "--experiment '../x'"),
        ("missing.yaml", {}, "missing.yaml: no such file"),
        (42, {}, "grid: expected a file path, a mapping or a GridSpec"),
    ],
    ids=[
        "grid",
        "set-value",
        "set-key",
        "workers",
        "backend",
        "accelerator",
        "experiment",
        "file",
        "type",
    ],
)
def test_run_grid_makes_the_clis_checks_before_creating_anything(
    client: MlflowClient, tracking_uri: str, grid: Any, options: dict[str, Any], needle: str
) -> None:
    with pytest.raises(UserError) as err:
        harness.run_grid(grid, tracking_uri=tracking_uri, **options)
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert [e.name for e in client.search_experiments()] == ["Default"]


# --------------------------------------------------------------------------- one real grid


@pytest.fixture(scope="module")
def readme_run(_template_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The README's example run as written, in a folder with a tiny grids/quick.yaml and an
    empty store at the default URI (sqlite:///mlflow.db): the folder and the example's names."""
    folder = tmp_path_factory.mktemp("readme")
    shutil.copy(_template_store, folder / "mlflow.db")
    (folder / "grids").mkdir()
    (folder / "grids" / "quick.yaml").write_text(yaml.safe_dump(TINY_QUICK))
    names: dict[str, Any] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("MPLBACKEND", "Agg")
        exec(compile(readme_example(), str(README), "exec"), names)
    return folder, names


@pytest.mark.slow  # a real grid, 16 s on 2 cores: `make test-slow` (CI runs both suites)
def test_the_readme_example_runs_a_grid_and_plots_its_results(readme_run: Any) -> None:
    folder, names = readme_run
    code = [line for line in readme_example().splitlines() if line.strip()]
    assert len(code) < 10, code
    outcome, table = names["outcome"], names["table"]
    assert outcome.experiment == "quick"
    assert outcome.tracking_uri == f"sqlite:///{(folder / 'mlflow.db').resolve()}"
    assert outcome.counts == {"final": {"ok": 4}} and outcome.failed == 0
    assert len(table) == 2 and set(table.attention) == {"dot", "scaled_dot"}
    assert (table.n == 2).all() and table.n_params.notna().all()
    assert (table.ci_low <= table["mean"]).all() and (table["mean"] <= table.ci_high).all()
    pngs = [p for p in folder.iterdir() if p.suffix == ".png"]
    assert len(pngs) == 1 and pngs[0].stat().st_size > 1000


def test_results_and_load_runs_match_mlflow_and_the_export(
    readme_run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, names = readme_run
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("quick")
    children = [
        r
        for r in client.search_runs([exp.experiment_id], max_results=1000)
        if "harness.cell_id" in r.data.tags
    ]
    runs = harness.load_runs("quick", tracking_uri=uri)
    assert sorted(runs.run_id) == sorted(r.info.run_id for r in children)
    by_id = {r.info.run_id: r for r in children}
    for row in runs.to_dict("records"):
        run = by_id[row["run_id"]]
        assert row["test"] == run.data.metrics["test/acc"]
        assert row["n_params"] == int(run.data.params["model.n_params"])
        assert row["model.d_model"] == 16 and row["optim.schedule"] == "constant"  # typed params
    assert str(runs.start_time.dtype).startswith("datetime64") and runs.current.all()

    monkeypatch.chdir(folder)  # the default URI: sqlite:///mlflow.db
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["export", "quick", "--format", "parquet", "--out", str(tmp_path)]) == 0
    exported = pd.read_parquet(tmp_path / "results.parquet")
    pd.testing.assert_frame_equal(exported, names["table"], check_dtype=False)
    for row in exported.itertuples():
        scores = runs[(runs.attention == row.attention)].test
        assert row.mean == pytest.approx(scores.mean(), abs=1e-12)


def test_harness_report_writes_the_report_and_its_data(readme_run: Any, tmp_path: Path) -> None:
    folder, _ = readme_run
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    files = harness.report("quick", out=tmp_path / "r", formats=["html"], tracking_uri=uri)
    names = [p.name for p in files]
    assert names[:2] == ["report.html", "figures"] and sorted(names[2:]) == sorted(DATA_NAMES)
    assert all(p.exists() for p in files)
    shown = html_results((tmp_path / "r" / "report.html").read_text())
    table = pd.read_csv(tmp_path / "r" / "results.csv")
    assert [r["mean"] for r in shown] == [f"{m:.4f}" for m in table["mean"]]
    rows = check_latex((tmp_path / "r" / "results.tex").read_text(),
                       [c for c in LATEX_COLUMNS["results"] if c != "sweep"])  # fmt: skip
    assert [r[1] for r in rows[1:]] == [r"dot", r"scaled\_dot"]
