"""PostgreSQL as MLflow's store, written by the launcher directly (`--tracking-uri
postgresql://...`, no tracking server in between), and a PostgreSQL URI that cannot be used:
one line, exit code 2, no password printed, nothing created.

The server is real (tests/postgres_server.py, started once per session); without PostgreSQL
installed these tests are skipped, and CI (HARNESS_REQUIRE_SERVICES=1) fails instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from mlflow_server import free_port

from harness.cli import main

GRID = {
    "name": "pg",
    "protocol": "fixed",
    "tasks": [{"name": "copy", "params": {"length": 4, "n_train": 128}}],
    "model": {"d_model": 16, "d_ff": 32, "d_k": 8, "n_layers": 1},
    "attention": ["dot", "additive"],
    "optimizers": [{"name": "adam", "lr": 0.003}],
    "seeds": [0],
    "budget": {"steps": 30, "val_every": 15},
}


@pytest.fixture
def pg_store(_postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh migrated PostgreSQL database; artifacts go to ./mlruns in this test's folder."""
    monkeypatch.chdir(tmp_path)
    return _postgres.create_database(f"t_{tmp_path.name[-20:].lower()}", template="template_mlflow")


@pytest.mark.slow  # 30 s with the server's start: `make test-slow` (CI runs both suites)
def test_a_grid_written_by_the_launcher_to_postgresql_is_complete_and_resumes(
    pg_store: str, tmp_path: Path
) -> None:
    path = tmp_path / "pg.yaml"
    path.write_text(yaml.safe_dump(GRID))
    argv = ["run", str(path), "--tracking-uri", pg_store, "--workers", "2", "--no-progress"]
    assert main(argv) == 0
    client = MlflowClient(pg_store)
    (exp,) = [e for e in client.search_experiments() if e.name == "pg"]
    runs = client.search_runs([exp.experiment_id])
    cells = [r for r in runs if "harness.cell_id" in r.data.tags]
    assert sorted(r.info.run_name for r in cells) == [
        "copy/additive/adam/lr=0.003/seed=0",
        "copy/dot/adam/lr=0.003/seed=0",
    ]
    for run in cells:
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
        assert sorted(steps) == list(range(1, 31))  # every point once
    assert main(argv) == 0  # a second launch finds every cell FINISHED and trains nothing
    assert len(client.search_runs([exp.experiment_id])) == len(runs)


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("postgresql://harness:s3cret@127.0.0.1:{closed}/mlflow", "cannot connect"),
        ("postgresql+pg8000://harness:s3cret@127.0.0.1:{closed}/mlflow", "driver is not installed"),
    ],
)
def test_a_postgresql_store_that_cannot_be_used_is_one_line_without_the_password(
    uri: str, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    uri = uri.format(closed=free_port())  # nothing listens there
    path = tmp_path / "pg.yaml"
    path.write_text(yaml.safe_dump(GRID))
    assert main(["run", str(path), "--tracking-uri", uri]) == 2
    out, err = capsys.readouterr()
    (line,) = err.strip().splitlines()
    assert line.startswith("error: tracking URI postgresql") and says in line, line
    assert "s3cret" not in out + err and "***" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pg.yaml"]  # no mlruns, no mlflow.db
