"""A grid on a real two-node Ray cluster on this machine (tests/ray_cluster.py: a head and a
worker node of one CPU each, on 127.0.0.1) that writes to a real `mlflow server`.

Cells train on both nodes, each run tagged with its node; the Ray actors write their runs to
the server themselves; SIGKILL of the worker node while it trains a cell loses that cell only
(KILLED, the error names the dead actor), the grid goes on on the head and the launcher ends;
the same command then completes the grid."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _grids import (
    assert_complete,
    assert_untouched,
    cells,
    launched,
    snapshot,
    wait_for,
    write_grid,
)
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow_server import MlflowServer
from ray_cluster import RayCluster, connected

pytest.importorskip("ray", reason="the `ray` extra (make test installs it)")

NODE, ERROR = "harness.node", "harness.error"
GRID = {  # 6 cells of a few seconds each
    "attention": ["dot", "multihead", "scaled_dot"],
    "optimizers": [{"name": "adam", "lr": 0.003}],
    "seeds": [0, 1],
    "budget": {"steps": 300, "val_every": 150},
}


@pytest.fixture
def server(_template_store: Path, tmp_path: Path) -> Iterator[MlflowServer]:
    server = MlflowServer.over_copy(_template_store, tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def cluster() -> Iterator[RayCluster]:
    cluster = RayCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.slow  # about 2-3 min on 2 cores: `make test-slow` (CI runs both suites)
def test_a_grid_on_two_ray_nodes_loses_only_the_running_cell_of_a_killed_node(
    server: MlflowServer, cluster: RayCluster, tmp_path: Path
) -> None:
    assert {address for address, _ in cluster.listening()} == {"127.0.0.1"}
    client = MlflowClient(server.url)
    path = write_grid(tmp_path, "two_nodes", **GRID)
    args = ("--backend", "ray", "--ray-address", cluster.address)
    head, worker = cluster.node_tag("head"), cluster.node_tag("worker")
    writers: dict[str, set[int]] = {"head": set(), "worker": set()}  # node -> its processes
    err = tmp_path / "err.txt"
    with launched(path, server.url, *args, stderr=err, env=cluster.env) as launcher:

        def finished_on_both_nodes() -> bool:
            for name in writers:  # who talks to the server: the nodes' Ray workers
                writers[name] |= connected(cluster.pids(name), server.port)
            runs = cells(client, "two_nodes")
            return {head, worker} <= {r.data.tags.get(NODE) for r in runs if _finished(r)}

        wait_for(finished_on_both_nodes, "cells finished on both nodes", launcher)
        # The worker node's actor is titled `ray::CellWorker.run` while it trains a cell,
        # whose run the launcher created RUNNING before handing it the cell.
        wait_for(lambda: _training(cluster), "a cell training on the worker node", launcher)
        cluster.kill_worker()
        killed_at = time.time()
        before = cells(client, "two_nodes")
        assert launcher.wait(timeout=240) == 1  # the grid went on; the lost cell counts as failed
    ended = time.time() - killed_at
    assert "Traceback" not in err.read_text()
    # The Ray workers of both nodes held connections to the server: they wrote their runs
    # themselves (through a Ray queue, only the launcher would).
    assert writers["head"] and writers["worker"]

    kept = snapshot(client, before)
    runs = cells(client, "two_nodes")
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 5 + ["KILLED"]
    (killed,) = [r for r in runs if r.info.status == "KILLED"]
    assert killed.info.run_id not in kept
    assert killed.data.tags[ERROR].startswith("Ray actor died: "), killed.data.tags[ERROR]
    assert killed.data.tags.get(NODE) in (worker, None)  # sent with its first batch, if any
    assert {r.data.tags[NODE] for r in runs if _finished(r)} == {head, worker}
    after_kill = [r for r in runs if _finished(r) and r.info.run_id not in kept]
    assert after_kill and {r.data.tags[NODE] for r in after_kill} == {head}
    assert_untouched(client, kept)

    started = time.monotonic()
    with launched(path, server.url, *args, stderr=err, env=cluster.env) as again:
        assert again.wait(timeout=240) == 0
    print(f"\nworker node SIGKILLed: its cell KILLED {killed.info.end_time / 1000 - killed_at:.1f}"
          f" s later, the launcher ended {ended:.0f} s later (exit 1); the rerun took "
          f"{time.monotonic() - started:.0f} s")  # fmt: skip
    assert_complete(client, "two_nodes", n_cells=6)
    assert_untouched(client, kept)
    assert client.get_run(killed.info.run_id).info.status == "KILLED"
    assert len(cells(client, "two_nodes")) == 7


def _finished(run: Run) -> bool:
    return run.info.status == "FINISHED"


def _training(cluster: RayCluster) -> bool:
    return any(t.startswith("ray::CellWorker.run") for t in cluster.titles("worker").values())
