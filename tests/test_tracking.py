"""MlflowRunLogger against a real store: what it buffers, when it sends, MLflow's limits."""

from __future__ import annotations

from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from harness import schema
from harness.tracking import (
    MAX_ENTITIES_PER_BATCH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_PER_BATCH,
    MAX_TAGS_PER_BATCH,
    MlflowRunLogger,
    experiment_id,
)


class CountingClient(MlflowClient):
    """A real client that counts its `log_batch` calls (each is a round of store writes)."""

    def __init__(self, tracking_uri: str) -> None:
        super().__init__(tracking_uri)
        self.batches: list[tuple[int, int, int]] = []  # (metrics, params, tags) per call

    def log_batch(self, run_id: str, metrics=(), params=(), tags=(), **kw: Any) -> None:  # type: ignore[override]
        self.batches.append((len(metrics), len(params), len(tags)))
        return super().log_batch(run_id, metrics=metrics, params=params, tags=tags, **kw)


def _logger(tracking_uri: str) -> MlflowRunLogger:
    client = CountingClient(tracking_uri)
    return MlflowRunLogger.create(client, experiment_id(client, "t"), "run", {})


def test_a_short_run_sends_its_whole_record_in_one_call(
    tracking_uri: str, client: MlflowClient
) -> None:
    logger = _logger(tracking_uri)
    for step in range(1, 301):
        logger.log_metrics({schema.TRAIN_LOSS: 1.0 / step, schema.GRAD_NORM: 2.0}, step=step)
    logger.add_params({"data.n_train": "256", schema.N_PARAMS: "1000"})
    logger.add_tags({schema.ACCELERATOR: "cpu"})
    logger.save()  # what Lightning calls after fit and after test
    logger.finalize("success")
    run = client.get_run(logger.run_id)
    assert run.data.metrics == {} and run.data.params == {}  # held until the run ends
    logger.finish("FINISHED", "ok")
    assert logger.client.batches == [(600, 2, 2)]
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"data.n_train": "256", schema.N_PARAMS: "1000"}
    assert run.data.tags[schema.OUTCOME] == "ok" and run.data.tags[schema.ACCELERATOR] == "cpu"
    history = client.get_metric_history(logger.run_id, schema.TRAIN_LOSS)
    assert [m.step for m in history] == list(range(1, 301))


def test_a_long_record_is_split_at_mlflows_limits_and_arrives_whole(
    tracking_uri: str, client: MlflowClient
) -> None:
    """MLflow refuses a log_batch over 1000 metrics, 100 params or 100 tags, and splits one
    of more than 1000 entities in all into several store calls."""
    logger = _logger(tracking_uri)
    n_points, n_params, n_tags = 2 * MAX_METRICS_PER_BATCH + 500, 250, 130
    logger.add_params({f"p{i}": str(i) for i in range(n_params)})
    logger.add_tags({f"t{i}": str(i) for i in range(n_tags)})
    for step in range(n_points):
        logger.log_metrics({schema.TRAIN_LOSS: float(step)}, step=step)
    logger.finish("FINISHED", "ok")
    batches = logger.client.batches
    for metrics, params, tags in batches:
        assert metrics <= MAX_METRICS_PER_BATCH and params <= MAX_PARAMS_PER_BATCH
        assert tags <= MAX_TAGS_PER_BATCH and metrics + params + tags <= MAX_ENTITIES_PER_BATCH
    assert [sum(column) for column in zip(*batches, strict=True)] == [
        n_points,
        n_params,
        n_tags + 1,  # and the outcome
    ]
    # two full batches during the run (points, with the params and tags riding along) and
    # the rest at the end: no more calls than the 2881 entities need
    assert len(batches) == 3
    run = client.get_run(logger.run_id)
    assert len(run.data.params) == n_params and run.data.tags["t129"] == "129"
    assert len(client.get_metric_history(logger.run_id, schema.TRAIN_LOSS)) == n_points


def test_log_params_and_set_tags_send_at_once(tracking_uri: str, client: MlflowClient) -> None:
    """The launcher logs a cell's params right after creating its run, before any worker."""
    logger = _logger(tracking_uri)
    logger.log_params({"lr": "0.01"})
    logger.set_tags({schema.PHASE: "tune"})
    run = client.get_run(logger.run_id)
    assert run.data.params == {"lr": "0.01"} and run.data.tags[schema.PHASE] == "tune"


def test_a_record_the_store_refuses_still_lets_the_run_end_failed(
    tracking_uri: str, client: MlflowClient
) -> None:
    """run_cell ends a run FAILED when finishing it raises: the refused buffer is not sent
    again, so the failure itself is recorded."""
    logger = _logger(tracking_uri)
    logger.log_params({"lr": "0.01"})
    logger.add_params({"lr": "0.02"})  # MLflow refuses to change a param
    logger.log_metrics({schema.TRAIN_LOSS: 1.0}, step=1)
    with pytest.raises(MlflowException):
        logger.finish("FINISHED", "ok")
    logger.finish("FAILED", "failed", "Traceback ...\nMlflowException: changing param values")
    run = client.get_run(logger.run_id)
    assert run.info.status == "FAILED" and run.data.tags[schema.OUTCOME] == "failed"
    assert run.data.tags[schema.ERROR] == "MlflowException: changing param values"
    assert run.data.params == {"lr": "0.01"}
