"""What the report fault tests share: an experiment a report can be built from, written
straight into MLflow in the run schema of DESIGN.md (no training: a second or so)."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from harness import schema

CONFIGS = [("dot", "adam", 0.7), ("multihead", "adam", 0.9), ("dot", "sgd", 0.5)]
SEEDS = (1, 2)


def make_experiment(
    client: MlflowClient,
    name: str,
    grid: str = "fake",
    task: str = "copy",
    sweep: dict[str, object] | None = None,
) -> str:
    """An experiment with a parent run and FINISHED final runs of a few attention x optimizer
    configurations, two seeds each; returns its id. `grid`, `task` and `sweep` land where the
    launcher puts them (the `harness.grid` tag, the `task` param, the `harness.sweep` tag)."""
    exp_id = client.create_experiment(name)
    parent = client.create_run(exp_id, run_name=grid, tags={schema.GRID: grid})
    client.log_param(parent.info.run_id, schema.PROTOCOL, "fixed")
    client.set_terminated(parent.info.run_id, "FINISHED")
    for attention, optimizer, level in CONFIGS:
        for seed in SEEDS:
            _final_run(
                client,
                exp_id,
                parent.info.run_id,
                grid,
                task,
                sweep or {},
                attention,
                optimizer,
                seed,
                level + 0.01 * seed,
            )
    return exp_id


def _final_run(
    client: MlflowClient,
    exp_id: str,
    parent_id: str,
    grid: str,
    task: str,
    sweep: dict[str, object],
    attention: str,
    optimizer: str,
    seed: int,
    acc: float,
) -> None:
    tags = {
        schema.PARENT: parent_id,
        schema.CELL_ID: f"{attention}-{optimizer}-{seed}",
        schema.GRID: grid,
        schema.PHASE: "final",
        schema.OUTCOME: "ok",
        schema.METRIC: "acc",
        schema.METRIC_LABEL: "accuracy",
        schema.METRIC_BOUNDS: "0,1",
        schema.TARGET: "0.8",
        schema.HIGHER_IS_BETTER: "true",
        schema.SWEEP: json.dumps(sweep),
    }
    name = f"{task}/{attention}/{optimizer}/lr=0.001/seed={seed}"
    run_id = client.create_run(exp_id, run_name=name, tags=tags).info.run_id
    params = {
        "task": task,
        "attention": attention,
        "optimizer": optimizer,
        "lr": "0.001",
        "seed": str(seed),
        "steps": "20",
        "phase": "final",
    }
    metrics = [
        Metric(key, value, 0, step)
        for step, value in ((10, acc / 2), (20, acc))
        for key, value in (
            (schema.val_metric("acc"), value),
            (schema.STEP_MS, 5.0),
            (schema.THROUGHPUT, 1000.0),
        )
    ]
    metrics.append(Metric(schema.test_metric("acc"), acc, 0, 20))
    client.log_batch(
        run_id,
        metrics=metrics,
        params=[Param(k, v) for k, v in params.items()],
        tags=[RunTag(schema.ACCELERATOR, "cpu")],
    )
    client.set_terminated(run_id, "FINISHED")


def report_files(folder: Path) -> set[str]:
    """Every path under `folder`, relative to it (a report's files, or what is left over)."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()
