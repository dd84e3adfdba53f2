"""The backend interface: the typed messages workers send, applied to a real MLflow store,
a real local pool running one tiny cell, and each backend's own command-line options."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from harness import backends, schema
from harness.backends.base import (
    Done,
    Job,
    LogArtifact,
    LogMetrics,
    LogParams,
    LogTags,
    Lost,
    Pool,
    Terminate,
)
from harness.backends.local import LocalPool, PipeSink
from harness.cli import _parser
from harness.config import resolve
from harness.errors import UserError
from harness.tracking import MlflowRunLogger, experiment_id, run_tags

WRITES = (LogMetrics, LogParams, LogTags, LogArtifact, Terminate)
TINY = {  # a 4-symbol copy, a 16-wide one-layer model: seconds on 2 cores
    "task.length": 4,
    "task.n_train": 256,
    "model.d_model": 16,
    "model.d_ff": 32,
    "model.d_k": 8,
    "model.n_layers": 1,
    "train.batch_size": 32,
    "train.val_every": 5,
}


def _run(client: MlflowClient) -> str:
    return client.create_run(experiment_id(client, "writes")).info.run_id


def test_every_write_applies_itself_to_a_real_store(client: MlflowClient, tmp_path: Path) -> None:
    run_id = _run(client)
    writes = [
        LogParams(run_id, [("task", "copy"), ("model.d_model", "16")]),
        LogTags(run_id, [(schema.OUTCOME, "ok")]),
        LogMetrics(run_id, [(schema.TRAIN_LOSS, 2.0, 1000, 1), (schema.TRAIN_LOSS, 1.5, 1001, 2)]),
        LogArtifact(run_id, schema.CONFIG_JSON, b'{"lr": 0.01}'),
        LogArtifact(run_id, "figures/maps.png", b"\x89PNG bytes"),
        Terminate(run_id, "FINISHED"),
    ]
    for write in writes:
        write.apply(client)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"task": "copy", "model.d_model": "16"}
    assert run.data.tags[schema.OUTCOME] == "ok"
    history = client.get_metric_history(run_id, schema.TRAIN_LOSS)
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.5)]
    config = Path(client.download_artifacts(run_id, schema.CONFIG_JSON, str(tmp_path)))
    assert json.loads(config.read_text()) == {"lr": 0.01}
    figure = Path(client.download_artifacts(run_id, "figures/maps.png", str(tmp_path)))
    assert figure.read_bytes() == b"\x89PNG bytes"


def test_a_pipe_sink_sends_typed_writes_that_arrive_whole(client: MlflowClient) -> None:
    """What a worker's MlflowClient calls become on the launcher's side of the pipe."""
    run_id = _run(client)
    here, there = mp.get_context("spawn").Pipe(duplex=True)
    sink = PipeSink(there)
    sink.log_batch(
        run_id,
        metrics=[Metric(schema.GRAD_NORM, 0.5, 1000, 3)],
        params=[Param("seed", "0")],
        tags=[RunTag(schema.PHASE, "tune")],
    )
    sink.log_dict(run_id, {"n_tokens": [4]}, schema.TEST_OUTCOMES)
    sink.set_terminated(run_id, "FAILED")
    received = []
    while here.poll(1):
        received.append(here.recv())
    assert [type(m) for m in received] == [LogMetrics, LogParams, LogTags, LogArtifact, Terminate]
    assert all(m.run_id == run_id for m in received)
    for write in received:
        write.apply(client)
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.metrics == {schema.GRAD_NORM: 0.5} and run.data.params == {"seed": "0"}
    assert run.data.tags[schema.PHASE] == "tune"
    assert {a.path for a in client.list_artifacts(run_id)} == {schema.TEST_OUTCOMES}


def test_a_local_pool_trains_a_cell_and_reports_it_in_typed_events(client: MlflowClient) -> None:
    cfg = resolve("copy", "dot", "adam", lr=3e-3, seed=0, steps=10, overrides=TINY)
    exp_id = experiment_id(client, "pool")
    logger = MlflowRunLogger.create(client, exp_id, cfg.run_name, run_tags(cfg, "pool"))
    pool = LocalPool(1, "cpu")
    assert isinstance(pool, Pool)
    events: list = []
    try:
        assert pool.idle == 1
        pool.submit(Job(cfg.to_dict(), logger.run_id))
        assert pool.idle == 0
        deadline = time.monotonic() + 240
        while not events or not isinstance(events[-1], Done | Lost):
            assert time.monotonic() < deadline, events
            for event in pool.poll(timeout=0.5):
                events.append(event)
                if isinstance(event, WRITES):
                    event.apply(client)
        assert pool.idle == 1
    finally:
        assert pool.shutdown() == []
    done = events[-1]
    assert isinstance(done, Done) and done.run_id == logger.run_id, done
    assert all(isinstance(e, WRITES) and e.run_id == logger.run_id for e in events[:-1])
    assert done.outcome == "ok" and schema.VAL_LOSS in done.metrics
    assert any(isinstance(e, Terminate) for e in events)  # the run ends before `Done`
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.data.tags[schema.OUTCOME] == "ok"
    metric = run.data.tags[schema.METRIC]
    assert run.data.metrics[schema.val_metric(metric)] == done.metrics[schema.val_metric(metric)]


def _run_args(*argv: str):
    return _parser().parse_args(["run", "grid.yaml", *argv])


@pytest.mark.parametrize("name", backends.BACKENDS)
def test_each_backend_takes_only_its_own_options(name: str) -> None:
    assert backends.chosen_options(_run_args("--backend", name)) == {}
    for other in backends.BACKENDS:
        for flag in backends.backend(other).OPTIONS:
            args = _run_args("--backend", name, flag, "value")
            if other == name:
                key = flag.lstrip("-").replace("-", "_")
                assert backends.chosen_options(args) == {key: "value"}
            else:
                with pytest.raises(UserError, match=f"^{flag}: only with --backend {other}$"):
                    backends.chosen_options(args)


def test_the_ray_address_reaches_the_ray_backend_by_its_own_name(tracking_uri: str) -> None:
    args = _run_args("--backend", "ray", "--ray-address", "ray://head.invalid:10001")
    options = backends.chosen_options(args)
    assert options == {"ray_address": "ray://head.invalid:10001"}
    pytest.importorskip("ray", reason="the `ray` extra")
    with pytest.raises(UserError, match="workers on other machines cannot write to a local"):
        backends.check("ray", tracking_uri, options)  # refused before anything starts
    backends.check("local", tracking_uri, {})
