"""SIGKILL in the middle of a grid: of the launcher, of one worker, of a Ray launcher with
its Ray instance. Rerunning the same command completes the grid: every cell has exactly one
FINISHED run, runs finished before the fault keep their ids, end times and every metric
point, interrupted runs are KILLED, and no point is lost or doubled."""

from __future__ import annotations

import os
import signal
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
    statuses,
    wait_for,
    worker_pids,
    write_grid,
)
from mlflow import MlflowClient

LONG = {"budget": {"steps": 100, "val_every": 50}}  # cells long enough to be caught running


@pytest.mark.slow  # 35-55 s each on 2 cores: `make test-slow` (CI runs both suites)
def test_launcher_sigkilled_mid_grid_rerun_completes_and_keeps_finished_runs(
    tracking_uri: str, client: MlflowClient, tmp_path: Path
) -> None:
    path = write_grid(tmp_path, "killed", attention=["dot", "multihead"],
                      optimizers=["adam", "rmsprop"], seeds=[0], **LONG)  # fmt: skip
    with launched(path, tracking_uri, "--workers", "2", stderr=tmp_path / "err") as launcher:
        wait_for(mid_grid(client, "killed"), "finished and running cells at once", launcher)
        workers = worker_pids(launcher.pid)
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait(timeout=30)
    assert len(workers) == 2
    wait_for(lambda: not any(alive(p) for p in workers), "worker exit after the launcher's")
    before = cells(client, "killed")
    kept = snapshot(client, before)
    interrupted = {r.info.run_id for r in before if r.info.status == "RUNNING"}
    assert kept and interrupted

    assert run_grid(path, tracking_uri, "--workers", "2") == 0
    assert_complete(client, "killed", n_cells=4)
    assert_untouched(client, kept)
    after = {r.info.run_id: r.info.status for r in cells(client, "killed")}
    assert {after[run_id] for run_id in interrupted} == {"KILLED"}
    assert len(after) == 4 + len(interrupted)


@pytest.mark.slow  # 35-55 s each on 2 cores: `make test-slow` (CI runs both suites)
def test_a_worker_sigkilled_mid_cell_loses_only_that_cell_and_rerun_completes(
    tracking_uri: str, client: MlflowClient, tmp_path: Path
) -> None:
    path = write_grid(tmp_path, "worker", attention=["dot", "scaled_dot", "multihead"],
                      optimizers=["adam"], seeds=[0], **LONG)  # fmt: skip
    err = tmp_path / "err.txt"
    with launched(path, tracking_uri, "--workers", "1", stderr=err) as launcher:

        def second_cell_started() -> bool:
            return sorted(statuses(client, "worker")) == ["FINISHED", "RUNNING"]

        # One worker: the RUNNING run is its cell, caught just after it started.
        wait_for(second_cell_started, "a second cell running", launcher)
        (worker,) = worker_pids(launcher.pid)
        os.kill(worker, signal.SIGKILL)
        assert launcher.wait(timeout=240) == 1  # the grid went on; a lost cell counts as failed
    assert "Traceback" not in err.read_text()
    runs = cells(client, "worker")
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED", "KILLED"]
    (lost,) = [r for r in runs if r.info.status == "KILLED"]
    assert lost.data.tags["harness.error"] == "worker process died (exit code -9)"
    kept = snapshot(client, runs)

    assert run_grid(path, tracking_uri, "--workers", "1") == 0
    assert_complete(client, "worker", n_cells=3)
    assert_untouched(client, kept)
    assert client.get_run(lost.info.run_id).info.status == "KILLED"
    assert len(cells(client, "worker")) == 4


@pytest.mark.slow  # 35-55 s each on 2 cores: `make test-slow` (CI runs both suites)
def test_a_ray_launcher_sigkilled_with_its_ray_instance_rerun_completes(
    tracking_uri: str, client: MlflowClient, tmp_path: Path
) -> None:
    pytest.importorskip("ray", reason="the `ray` extra (make test installs it)")
    path = write_grid(tmp_path, "ray_killed", attention=["dot", "multihead"],
                      optimizers=[{"name": "adam", "lr": 0.003}], seeds=[0, 1, 2, 3])  # fmt: skip
    ray = ("--backend", "ray", "--workers", "2")
    err = tmp_path / "err.txt"
    with launched(path, tracking_uri, *ray, stderr=err, session=True) as launcher:
        two_finished = lambda: statuses(client, "ray_killed").count("FINISHED") >= 2  # noqa: E731
        wait_for(two_finished, "2 finished cells", launcher)
        os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and the Ray processes it started
        launcher.wait()
    before = cells(client, "ray_killed")
    kept = snapshot(client, before)
    interrupted = {r.info.run_id for r in before if r.info.status == "RUNNING"}
    assert 2 <= len(kept) < 8

    assert run_grid(path, tracking_uri, *ray) == 0
    assert_complete(client, "ray_killed", n_cells=8)
    assert_untouched(client, kept)
    assert {client.get_run(run_id).info.status for run_id in interrupted} <= {"KILLED"}
