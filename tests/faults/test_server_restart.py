"""The MLflow tracking server SIGKILLed in the middle of a grid (a real `mlflow server` on
127.0.0.1 over a SQLite store, and over a PostgreSQL database on a real PostgreSQL server),
restarted on the same port and store in time, or left down.

The store is read straight from the server's backend store (the SQLite file, the PostgreSQL
database), so the checks do not depend on the MLflow server being up. The launcher's
deadline (HARNESS_TRACKING_DEADLINE) is short here.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _grids import (
    alive,
    assert_complete,
    assert_untouched,
    cells,
    launched,
    mid_grid,
    run_grid,
    snapshot,
    wait_for,
    worker_pids,
    write_grid,
)
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow_server import MlflowServer

from harness.errors import UserError
from harness.retry import DEADLINE_ENV, tracking_deadline

GRID = {
    "attention": ["dot", "multihead"],
    "optimizers": ["adam", "rmsprop"],
    "seeds": [0],
    "budget": {"steps": 100, "val_every": 50},
}
RETRYING = "unreachable; retrying for up to"


@pytest.fixture
def server(store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowServer]:
    monkeypatch.chdir(tmp_path)
    server = MlflowServer(store, tmp_path / "artifacts")
    server.start()
    yield server
    server.stop()


def _store(server: MlflowServer) -> MlflowClient:
    return MlflowClient(server.store)


@pytest.mark.slow  # 35-55 s each on 2 cores: `make test-slow` (CI runs both suites)
def test_server_killed_and_restarted_within_the_deadline_loses_nothing(
    server: MlflowServer, tmp_path: Path
) -> None:
    store, err = _store(server), tmp_path / "err.txt"
    path = write_grid(tmp_path, "restart", **GRID)
    env = {DEADLINE_ENV: "60"}
    with launched(path, server.url, "--workers", "2", stderr=err, env=env) as launcher:
        wait_for(mid_grid(store, "restart"), "finished and running cells at once", launcher)
        kept = snapshot(store, cells(store, "restart"))
        server.kill()
        wait_for(lambda: RETRYING in err.read_text(), "retry notice", launcher, timeout=60)
        server.start()  # same port, same store
        assert launcher.wait(timeout=240) == 0

    # one line when it went away, one when it came back, nothing else (no traceback)
    went, came_back = err.read_text().splitlines()
    assert went == f"tracking server {server.url} {RETRYING} 60 s"
    assert re.fullmatch(rf"tracking server {re.escape(server.url)} answers again after \d+ s",
                        came_back)  # fmt: skip
    # The running cells went on: their writes waited for the server. Nothing was lost,
    # doubled or marked: one FINISHED run per cell and no other run.
    finished = assert_complete(store, "restart", n_cells=4)
    assert len(cells(store, "restart")) == 4
    assert_untouched(store, kept)

    # What makes retrying a write safe when its first attempt reached the server: the
    # server's SQL store keeps one copy of a repeated point.
    run_id = finished[0].info.run_id
    history = MlflowClient(server.url).get_metric_history(run_id, "train/loss")
    again = [Metric(m.key, m.value, m.timestamp, m.step) for m in history]
    MlflowClient(server.url).log_batch(run_id, metrics=again)
    assert len(store.get_metric_history(run_id, "train/loss")) == len(history) == 100


@pytest.mark.slow  # 35-55 s each on 2 cores: `make test-slow` (CI runs both suites)
def test_server_that_stays_down_stops_the_grid_in_one_line_and_rerun_completes(
    server: MlflowServer, tmp_path: Path
) -> None:
    store, err, deadline = _store(server), tmp_path / "err.txt", 3
    path = write_grid(tmp_path, "down", **GRID)
    env = {DEADLINE_ENV: str(deadline)}
    with launched(path, server.url, "--workers", "2", stderr=err, env=env) as launcher:
        wait_for(mid_grid(store, "down"), "finished and running cells at once", launcher)
        kept = snapshot(store, cells(store, "down"))
        workers = worker_pids(launcher.pid)
        server.kill()
        wait_for(lambda: RETRYING in err.read_text(), "retry notice", launcher, timeout=60)
        noticed = time.monotonic()
        assert launcher.wait(timeout=60) == 2
        assert time.monotonic() - noticed < deadline + 10  # no hang: the deadline, then out
    assert not any(alive(pid) for pid in workers)
    notice, error = err.read_text().splitlines()  # two lines, no traceback
    assert notice.startswith(f"tracking server {server.url} {RETRYING}")
    stopped = re.fullmatch(
        rf"error: tracking server {re.escape(server.url)} unreachable for {deadline} s; "
        r"(\d+) running cells? (?:was|were) interrupted; run the same command again to resume",
        error,
    )
    assert stopped, error
    # Left RUNNING: the store was gone. The launcher may count one more: a cell whose last
    # write (FINISHED) reached the server as it died, unconfirmed; the store keeps it.
    interrupted = [r.info.run_id for r in cells(store, "down") if r.info.status == "RUNNING"]
    assert 2 >= int(stopped.group(1)) >= len(interrupted) >= 1  # 2 workers

    server.start()
    assert run_grid(path, server.url, "--workers", "2") == 0
    assert_complete(store, "down", n_cells=4)
    assert_untouched(store, kept)
    assert {store.get_run(run_id).info.status for run_id in interrupted} == {"KILLED"}


@pytest.mark.parametrize("value", ["soon", "0", "-5", "inf", "nan"])
def test_a_deadline_that_is_not_a_positive_number_is_refused_naming_it(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DEADLINE_ENV, value)
    with pytest.raises(UserError, match=f"^{DEADLINE_ENV}='{value}': must be a number of seconds"):
        tracking_deadline()
    monkeypatch.setenv(DEADLINE_ENV, "2.5")
    assert tracking_deadline() == 2.5
