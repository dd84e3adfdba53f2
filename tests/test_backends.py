"""The backend interface: the typed messages workers send, applied to a real MLflow store,
a real local pool running one tiny cell, and each backend's own command-line options."""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

from harness import backends, schema
from harness.backends import local
from harness.backends.base import (
    Done,
    Job,
    LogArtifact,
    LogBatch,
    LogInputs,
    LogMetrics,
    LogParams,
    LogTags,
    Lost,
    Pool,
    Steps,
    Terminate,
)
from harness.backends.local import LocalPool, PipeSink
from harness.cli import _parser, main
from harness.config import resolve
from harness.errors import UserError
from harness.tracking import MlflowRunLogger, experiment_id, run_tags

WRITES = (LogBatch, LogMetrics, LogParams, LogTags, LogArtifact, LogInputs, Terminate)
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


DATASET = ("copy", "0a1b", "harness_task", '{"task": "copy"}', None, None)  # a LogInputs entry


def _run(client: MlflowClient) -> str:
    return client.create_run(experiment_id(client, "writes")).info.run_id


def test_every_write_applies_itself_to_a_real_store(client: MlflowClient, tmp_path: Path) -> None:
    run_id = _run(client)
    writes = [
        LogParams(run_id, [("task", "copy"), ("model.d_model", "16")]),
        LogTags(run_id, [(schema.OUTCOME, "ok")]),
        LogMetrics(run_id, [(schema.TRAIN_LOSS, 2.0, 1000, 1), (schema.TRAIN_LOSS, 1.5, 1001, 2)]),
        LogBatch(
            run_id,
            [(schema.GRAD_NORM, 0.5, 1002, 2)],
            [("data.n_train", "256")],
            [(schema.ACCELERATOR, "cpu")],
        ),
        LogArtifact(run_id, schema.CONFIG_JSON, b'{"lr": 0.01}'),
        LogArtifact(run_id, "figures/maps.png", b"\x89PNG bytes"),
        LogInputs(run_id, [(DATASET, [(schema.DATASET_CONTEXT, "train")])]),
        Terminate(run_id, "FINISHED"),
    ]
    for write in writes:
        write.apply(client)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"task": "copy", "model.d_model": "16", "data.n_train": "256"}
    assert run.data.tags[schema.OUTCOME] == "ok" and run.data.tags[schema.ACCELERATOR] == "cpu"
    assert run.data.metrics[schema.GRAD_NORM] == 0.5
    history = client.get_metric_history(run_id, schema.TRAIN_LOSS)
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.5)]
    config = Path(client.download_artifacts(run_id, schema.CONFIG_JSON, str(tmp_path)))
    assert json.loads(config.read_text()) == {"lr": 0.01}
    figure = Path(client.download_artifacts(run_id, "figures/maps.png", str(tmp_path)))
    assert figure.read_bytes() == b"\x89PNG bytes"
    (used,) = run.inputs.dataset_inputs
    assert (used.dataset.name, used.dataset.digest, used.dataset.source) == (
        "copy", "0a1b", '{"task": "copy"}',
    )  # fmt: skip
    assert [(t.key, t.value) for t in used.tags] == [(schema.DATASET_CONTEXT, "train")]


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
    dataset = Dataset("copy", "9f8e", "harness_task", "{}", profile='{"num_rows": 4}')
    sink.log_inputs(
        run_id, datasets=[DatasetInput(dataset, [InputTag(schema.DATASET_CONTEXT, "val")])]
    )
    sink.set_terminated(run_id, "FAILED")
    received = []
    while here.poll(1):
        received.append(here.recv())
    # one log_batch call stays one write: the launcher applies it as one call
    assert [type(m) for m in received] == [LogBatch, LogArtifact, LogInputs, Terminate]
    assert all(m.run_id == run_id for m in received)
    for write in received:
        write.apply(client)
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.metrics == {schema.GRAD_NORM: 0.5} and run.data.params == {"seed": "0"}
    assert run.data.tags[schema.PHASE] == "tune"
    assert {a.path for a in client.list_artifacts(run_id)} == {schema.TEST_OUTCOMES}
    (used,) = run.inputs.dataset_inputs
    assert (used.dataset.digest, used.dataset.profile) == ("9f8e", '{"num_rows": 4}')
    assert [(t.key, t.value) for t in used.tags] == [(schema.DATASET_CONTEXT, "val")]


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
    assert all(isinstance(e, (*WRITES, Steps)) and e.run_id == logger.run_id for e in events[:-1])
    assert done.outcome == "ok" and schema.VAL_LOSS in done.metrics
    # How far training has come, while it trains: after the first step, at most once every
    # REPORT_EVERY seconds, and at its end (10 steps: not a message per step)
    steps = [e for e in events if isinstance(e, Steps)]
    assert steps[0].steps == 1 and steps[-1].steps == 10
    assert [e.steps for e in steps] == sorted(e.steps for e in steps) and len(steps) < 10
    assert steps[-1].seconds <= done.fit_seconds
    # A short run's points, params and tags cost the launcher one log_batch, sent as the
    # run ends: after its artifacts, before Terminate (so a FINISHED run is whole) and `Done`;
    # its datasets (harness.provenance) one log_inputs, as soon as its data is built.
    kinds = [type(e) for e in events]
    assert kinds == [LogInputs, *[Steps] * len(steps), *[LogArtifact] * 3, LogBatch, Terminate,
                     Done]  # fmt: skip
    artifacts = {e.path for e in events if isinstance(e, LogArtifact)}
    assert artifacts == {schema.CONFIG_JSON, schema.TEST_OUTCOMES, schema.ATTENTION_MAPS}
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.data.tags[schema.OUTCOME] == "ok"
    assert run.data.tags[schema.NODE] == socket.gethostname()  # in the one LogBatch above
    metric = run.data.tags[schema.METRIC]
    assert run.data.metrics[schema.val_metric(metric)] == done.metrics[schema.val_metric(metric)]
    inputs = {i.tags[0].value: i.dataset.digest for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "val", "test"} and len(set(inputs.values())) == 3


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


# --------------------------------------------------------------------------- cells per GPU


def _with_cells_per_gpu(value: object, *argv: str) -> argparse.Namespace:
    """`harness run` arguments as they are once the command line has --cells-per-gpu."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells-per-gpu", **backends.CELLS_PER_GPU_FLAG)
    args = _run_args(*argv)
    args.cells_per_gpu = parser.parse_args(["--cells-per-gpu", str(value)]).cells_per_gpu
    return args


@pytest.mark.parametrize("backend", backends.BACKENDS)
def test_cells_per_gpu_reaches_either_backend_as_an_option(backend: str) -> None:
    args = _with_cells_per_gpu(3, "--backend", backend, "--accelerator", "gpu")
    assert backends.chosen_options(args) == {"cells_per_gpu": 3}
    args = _with_cells_per_gpu(1, "--backend", backend, "--accelerator", "cpu")
    assert backends.chosen_options(args) == {"cells_per_gpu": 1}  # one per GPU: no sharing


@pytest.mark.parametrize(
    ("argv", "value", "message"),
    [
        ((), 0, r"^--cells-per-gpu 0: must be an integer >= 1$"),
        ((), -2, r"^--cells-per-gpu -2: must be an integer >= 1$"),
        (("--accelerator", "cpu"), 2, r"^--cells-per-gpu 2: needs GPUs, but --accelerator is cpu"),
        (("--workers", "4"), 2, r"^--cells-per-gpu sets the number of workers .*--workers$"),
    ],
)
def test_a_bad_cells_per_gpu_is_one_line(argv: tuple, value: int, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        backends.chosen_options(_with_cells_per_gpu(value, *argv))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", [1.5, "2", True, 0])
def test_cells_per_gpu_from_python_must_be_a_positive_integer(value: object) -> None:
    with pytest.raises(UserError, match="must be an integer >= 1"):
        backends.check_cells_per_gpu(value, "gpu")


def test_a_cpu_pool_refuses_to_share_gpus_before_starting_a_worker(tracking_uri: str) -> None:
    """Through the Python API (no command line): make_pool refuses, nothing is started."""
    with pytest.raises(UserError, match="needs GPUs, but --accelerator is cpu"):
        backends.make_pool("local", None, "cpu", tracking_uri, {"cells_per_gpu": 2})


def test_n_cells_per_gpu_put_n_workers_on_every_gpu() -> None:
    assert local.pool_size(None, 2, 3) == 6
    assigned = local.gpu_assignment(local.pool_size(None, 2, 3), ["0", "1", "2"])
    assert assigned == ["0", "1", "2", "0", "1", "2"]
    assert Counter(assigned) == {"0": 2, "1": 2, "2": 2}
    uuids = ["GPU-5e1a", "GPU-77b0"]
    assert local.gpu_assignment(3, uuids) == ["GPU-5e1a", "GPU-77b0", "GPU-5e1a"]


def test_without_gpus_cells_per_gpu_changes_nothing() -> None:
    assert local.pool_size(None, 2, 0) == (os.cpu_count() or 1)
    assert local.pool_size(3, 2, 0) == 3
    assert local.pool_size(3, None, 8) == 3
    assert local.gpu_assignment(2, []) == [None, None]


@pytest.mark.parametrize(
    ("value", "visible"),
    [
        ("2,3", ["2", "3"]),
        (" GPU-5e1a , GPU-77b0", ["GPU-5e1a", "GPU-77b0"]),
        ("", []),
        ("0,-1,1", ["0"]),  # CUDA ignores everything from an invalid entry on
    ],
)
def test_visible_gpus_are_the_ones_cuda_visible_devices_names(value: str, visible: list) -> None:
    assert local.visible_gpus({local.CUDA_DEVICES: value}) == visible


def test_without_cuda_visible_devices_every_gpu_torch_counts_is_visible() -> None:
    import torch

    assert local.visible_gpus({}) == [str(i) for i in range(torch.cuda.device_count())]


def test_a_ray_actor_asks_for_its_share_of_a_gpu() -> None:
    from harness.backends.ray import actor_gpus

    assert actor_gpus(True, 4) == 0.25 and actor_gpus(True, 1) == 1.0
    assert actor_gpus(False, 4) == 0


# --------------------------------------------------------------------------- Ray and GPUs


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU to give")
def test_ray_is_not_asked_for_a_gpu_this_machine_lacks(
    tracking_uri: str, client: MlflowClient, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Actors asking Ray for a GPU that no node has would wait for ever: refused up front,
    before Ray starts or any run exists (tests/test_scaling.py asks a running Ray instance)."""
    ray = pytest.importorskip("ray", reason="the `ray` extra")
    grid = tmp_path / "gpu.yaml"
    grid.write_text("name: gpu\ntasks: [copy]\nattention: [dot]\noptimizers: [adam]\n")
    argv = ["run", str(grid), "--backend", "ray", "--tracking-uri", tracking_uri]
    assert main([*argv, "--accelerator", "gpu"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        "error: --accelerator gpu: this machine has no GPU for Ray to give the workers "
        "(use --accelerator cpu, or a cluster with GPUs)"
    )
    assert client.get_experiment_by_name("gpu") is None and not ray.is_initialized()
    backends.check("ray", tracking_uri, {}, "cpu")  # no GPU asked for: nothing to check
