"""The Ray pool on a real Ray instance with one CPU: a cell goes only to an actor that has
started, so an actor Ray cannot place never holds one; an actor that dies loses only its
cell and the pool goes on; a pool none of whose actors can start stops with one line instead
of waiting for ever (what a cluster that lost its nodes looks like to the launcher)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from harness import schema
from harness.backends.base import Done, Job, Lost, Steps
from harness.cli import main
from harness.config import resolve
from harness.tracking import MlflowRunLogger, experiment_id, run_tags

ray = pytest.importorskip("ray", reason="the `ray` extra (make test installs it)")
from harness.backends import ray as ray_backend  # noqa: E402  (needs ray)

pytestmark = pytest.mark.slow  # a real Ray instance, 2 min on 2 cores: `make test-slow`

TINY = {  # a 4-symbol copy, a 16-wide one-layer model: a second or two a cell
    "task.length": 4, "task.n_train": 256, "model.d_model": 16, "model.d_ff": 32,
    "model.d_k": 8, "model.n_layers": 1, "train.batch_size": 32, "train.val_every": 5,
}  # fmt: skip


@pytest.fixture(scope="module")
def one_cpu() -> Iterator[None]:
    """A Ray instance on this machine (loopback, as the harness starts one) with one CPU."""
    ray_backend._init_loopback(ray, num_cpus=1, **ray_backend._INIT)
    yield
    ray.shutdown()


def _job(client: MlflowClient, seed: int, steps: int = 5) -> Job:
    cfg = resolve("copy", "dot", "adam", lr=3e-3, seed=seed, steps=steps, overrides=TINY)
    tags = run_tags(cfg, "pool")
    logger = MlflowRunLogger.create(client, experiment_id(client, "pool"), cfg.run_name, tags)
    return Job(cfg.to_dict(), logger.run_id)


def _poll_until(pool: ray_backend.RayPool, client: MlflowClient, done, what: str) -> list:
    """Poll (applying the writes the actors sent) until `done(events)`; every idle count seen
    on the way is checked: one CPU, so never more than one actor to hand a cell to."""
    events: list = []
    deadline = time.monotonic() + 180
    while not done(events):
        assert time.monotonic() < deadline, f"no {what}: {events}"
        for event in pool.poll(timeout=0.5):
            events.append(event)
            if not isinstance(event, Done | Lost | Steps):  # a write
                event.apply(client)
        assert pool.idle <= 1
    return events


def test_cells_go_only_to_started_actors_and_a_dead_one_loses_only_its_cell(
    one_cpu: None, tracking_uri: str, client: MlflowClient
) -> None:
    pool = ray_backend.RayPool(2, "cpu", None, tracking_uri)  # two actors, room for one
    try:
        _poll_until(pool, client, lambda _: pool.idle == 1, "started actor")
        for _ in range(4):  # the other waits for a CPU: it is not handed a cell
            list(pool.poll(timeout=0.5))
            assert pool.idle == 1
        lost = _job(client, seed=0)
        pool.submit(lost)
        assert pool.idle == 0
        (slot,) = [s for s in pool._slots if s.job is not None]
        ray.kill(slot.actor)  # dies with its cell, as on a node that goes away
        events = _poll_until(pool, client, lambda e: any(isinstance(x, Lost) for x in e), "loss")
        (event,) = [e for e in events if isinstance(e, Lost)]
        assert event.run_id == lost.run_id and event.reason.startswith("Ray actor died: ")

        # the CPU is free again: an actor starts there and trains the next cell
        _poll_until(pool, client, lambda _: pool.idle == 1, "actor started after the loss")
        second = _job(client, seed=1)
        pool.submit(second)
        events = _poll_until(pool, client, lambda e: any(isinstance(x, Done) for x in e), "cell")
        assert [e.outcome for e in events if isinstance(e, Done | Lost)] == ["ok"]
    finally:
        assert [job.run_id for job in pool.shutdown(kill=True)] == []
    run = client.get_run(second.run_id)
    assert run.info.status == "FINISHED"
    node = ray.get_runtime_context().get_node_id()
    assert run.data.tags[schema.NODE] == f"{socket.gethostname()}/{node[:8]}"
    assert client.get_run(lost.run_id).info.status == "RUNNING"  # the launcher marks it KILLED


@pytest.mark.parametrize("store", ["local", "server"])
def test_each_cell_reports_its_steps_and_a_lost_progress_queue_loses_only_that(
    store: str, one_cpu: None, tracking_uri: str, client: MlflowClient, server_url: str
) -> None:
    """Through the Ray queue, also when actors write to a tracking server themselves; there
    the queue carries only `Steps`, and losing it (its node gone) stops them, not the grid."""
    uri = server_url if store == "server" else tracking_uri
    client = MlflowClient(uri)
    pool = ray_backend.RayPool(1, "cpu", None, uri)
    try:
        _poll_until(pool, client, lambda _: pool.idle == 1, "started actor")
        first = _job(client, seed=0, steps=20)
        pool.submit(first)
        events = _poll_until(pool, client, lambda e: any(isinstance(x, Done) for x in e), "cell")
        steps = [e.steps for e in events if isinstance(e, Steps)]
        assert steps[0] == 1 and steps[-1] == 20 and steps == sorted(steps)
        assert all(e.run_id == first.run_id for e in events if isinstance(e, Steps))
        if store == "local":
            return
        ray.kill(pool.queue.actor)  # as when the node that holds the queue goes away
        second = _job(client, seed=1, steps=20)
        pool.submit(second)
        events = _poll_until(pool, client, lambda e: any(isinstance(x, Done) for x in e), "cell")
        assert [e.outcome for e in events if isinstance(e, Done | Lost)] == ["ok"]
        assert not [e for e in events if isinstance(e, Steps)]
    finally:
        pool.shutdown(kill=True)
    assert client.get_run(second.run_id).info.status == "FINISHED"


@ray.remote(num_cpus=1)
class _Holder:
    """Holds the instance's one CPU while it lives."""

    def ready(self) -> bool:
        return True


def test_a_grid_whose_actors_cannot_start_stops_with_one_line(
    one_cpu: None,
    tracking_uri: str,
    client: MlflowClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    holder = _Holder.remote()
    ray.get(holder.ready.remote())
    monkeypatch.setattr(ray_backend, "PLACEMENT_WAIT", 2.0)
    grid = tmp_path / "full.yaml"
    grid.write_text(yaml.safe_dump({"name": "full", "protocol": "fixed", "tasks": ["copy"],
                                    "attention": ["dot"], "optimizers": ["adam"]}))  # fmt: skip
    started = time.monotonic()
    try:
        argv = ["run", str(grid), "--backend", "ray", "--tracking-uri", tracking_uri]
        assert main([*argv, "--no-progress"]) == 2
    finally:
        ray.kill(holder)
    assert time.monotonic() - started < 60
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        "error: no Ray worker could start in 2 s: the cluster has no room for one (1 CPU); "
        "run the same command again when it has"
    )
    exp = client.get_experiment_by_name("full")
    (parent,) = client.search_runs([exp.experiment_id])  # no cell was started
    assert parent.info.status == "KILLED"
