"""Four workers writing to one store at once, for a sustained grid: every run and every
metric point arrives, once. Each test runs against both stores, SQLite and PostgreSQL (a real
server on 127.0.0.1; `store` in tests/conftest.py).

- local backend, `--workers 4`: the workers send everything down their pipes and the
  launcher writes it to the store, one writer;
- Ray backend, 4 actors, each writing its runs straight to a real `mlflow server` over HTTP
  (four writers at once through the server into its store).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _grids import assert_complete, cells, run_grid, write_grid
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow_server import MlflowServer

# 8 cells of 100 steps: 4 at a time, twice over.
GRID = {
    "attention": ["dot", "multihead"],
    "optimizers": ["adam", "rmsprop"],
    "seeds": [0, 1],
    "budget": {"steps": 100, "val_every": 50},
}
# Points per run: train/loss and grad_norm every step; lr, time/step_ms and
# throughput/tokens_per_s every log_every (10) steps; val/acc and val/loss every 50 steps;
# test/acc and test/loss once; the one layer's attention diagnostics at step 0 and at each
# validation.
POINTS = {"train/loss": 100, "grad_norm": 100, "lr": 10, "time/step_ms": 10,
          "throughput/tokens_per_s": 10, "val/acc": 2, "val/loss": 2, "test/acc": 1,
          "test/loss": 1, "attn/logit_std/layer0": 3, "attn/entropy/layer0": 3}  # fmt: skip


def _assert_every_point_once(client: MlflowClient, experiment: str) -> None:
    finished = assert_complete(client, experiment, n_cells=8)
    assert len(cells(client, experiment)) == 8
    for run in finished:
        counts = {k: len(client.get_metric_history(run.info.run_id, k)) for k in run.data.metrics}
        assert counts == POINTS, run.info.run_name
    assert _most_at_once(finished) == 4  # the four workers did write at the same time


def _most_at_once(runs: list[Run]) -> int:
    """The largest number of runs whose [start, end] intervals overlap."""
    events = sorted([(r.info.start_time, 1) for r in runs] + [(r.info.end_time, -1) for r in runs])
    most = now = 0
    for _, change in events:
        now += change
        most = max(most, now)
    return most


@pytest.mark.slow
def test_four_local_workers_through_one_writer_lose_and_double_nothing(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # artifacts: ./mlruns here
    path = write_grid(tmp_path, "four", **GRID)
    assert run_grid(path, store, "--workers", "4") == 0
    _assert_every_point_once(MlflowClient(store), "four")


@pytest.fixture
def server(store: str, tmp_path: Path) -> Iterator[MlflowServer]:
    server = MlflowServer(store, tmp_path / "artifacts")
    server.start()
    yield server
    server.stop()


@pytest.mark.slow
def test_four_ray_actors_writing_to_a_tracking_server_lose_and_double_nothing(
    server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("ray", reason="the `ray` extra (make test installs it)")
    monkeypatch.chdir(tmp_path)
    path = write_grid(tmp_path, "four_ray", **GRID)
    assert run_grid(path, server.url, "--backend", "ray", "--workers", "4") == 0
    _assert_every_point_once(MlflowClient(server.store), "four_ray")
