"""MLflow tracking that follows the run schema of DESIGN.md without slowing training down.

- `MlflowRunLogger` is a Lightning logger over one MLflow run. It buffers metric points in
  memory and sends them with `log_batch` (at most 1000 points a call, MLflow's limit), never
  one request per point: a stock `MLFlowLogger` logging every step made a small model train
  about 3.7x slower than a plain loop on this project's machines. The params and tags a run
  adds while it trains wait in the same buffer: a short run's whole record (its points, the
  facts about its data and model, its outcome) goes in one `log_batch` when it ends, not in
  one call per kind and per Lightning stage. Every `log_batch` is a round of transactions
  in the store (about 5-20 ms each on SQLite here), paid by the launcher, the one writer.
- `StepMetrics` is the callback that records `train/loss` and `grad_norm` for every step, and
  `lr`, `time/step_ms` and `throughput/tokens_per_s` every `log_every` steps. It keeps the
  loss tensors on the device and reads them back once per window, so there is no host sync
  per step; the same read-back is where a non-finite loss is noticed and the run stopped.
  `time/step_ms` counts training only: each window's clock skips the validations in it.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from pytorch_lightning.loggers.logger import Logger
from pytorch_lightning.trainer.states import TrainerFn

import harness
from harness import schema
from harness.config import RunConfig
from harness.provenance import package_versions
from tasks import get_task

# MLflow's log_batch limits (documented): 1000 metrics, 100 params, 100 tags per call, and
# 1000 of the three together (MlflowClient splits a larger call into several).
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of experiment `name`, created if missing, marked as a model-training experiment
    (MLflow's `mlflow.experimentKind`). An experiment made before the harness marked them is
    marked when the harness launches into it; a kind someone chose in the UI is kept."""
    kind = {schema.EXPERIMENT_KIND: schema.MODEL_TRAINING}
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(name, tags=kind)
    if schema.EXPERIMENT_KIND not in found.tags:
        client.set_experiment_tag(found.experiment_id, *kind.popitem())
    return found.experiment_id


def context_tags() -> dict[str, str]:
    """MLflow's run-context tags (`resolve_tags`: mlflow.user, mlflow.source.name and
    .type, the git commit and branch of the entry point, MLFLOW_RUN_CONTEXT's), once per
    process: the git look-up takes about 0.2 s, so a launch asks once, not once per cell.

    The harness's own commit (`git_commit`) wins over the entry point's; where the two
    differ, the entry point's branch and repository URL go too, so a run never names the
    commit of one checkout with the branch of another."""
    return dict(_context_tags())


@functools.cache
def _context_tags() -> dict[str, str]:
    from mlflow.tracking.context.registry import resolve_tags

    tags = resolve_tags()
    ours = git_commit()
    if ours and tags.get(schema.MLFLOW_GIT_COMMIT, ours) != ours:
        tags = {k: v for k, v in tags.items() if not k.startswith(schema.MLFLOW_GIT_PREFIX)}
    if ours:
        tags[schema.MLFLOW_GIT_COMMIT] = ours
    return tags


@functools.cache
def git_commit() -> str | None:
    """The commit of the harness checkout, when it is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(harness.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class MlflowRunLogger(Logger):
    """A Lightning logger bound to one MLflow run; points, params and tags are batched in
    memory and sent when a batch is full or the run ends (`finish`)."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        super().__init__()
        self.client, self.run_id = client, run_id
        self._buffer: list[Metric] = []
        self._params: dict[str, str] = {}
        self._tags: dict[str, str] = {}

    @classmethod
    def start_run(
        cls,
        client: MlflowClient,
        experiment_id: str,
        run_name: str,
        params: Mapping[str, str],
        tags: Mapping[str, str],
        parent_run_id: str | None = None,
    ) -> MlflowRunLogger:
        """Create the run with its tags and params."""
        logger = cls.create(client, experiment_id, run_name, tags, parent_run_id)
        logger.log_params(params)
        return logger

    @classmethod
    def create(
        cls,
        client: MlflowClient,
        experiment_id: str,
        run_name: str,
        tags: Mapping[str, str],
        parent_run_id: str | None = None,
    ) -> MlflowRunLogger:
        """Create the run with its tags only (one call), so a caller can record that it exists
        before the next write, which may fail."""
        all_tags = dict(tags)
        if parent_run_id:
            all_tags[schema.PARENT] = parent_run_id
        run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
        return cls(client, run.info.run_id)

    # Lightning's Logger interface -------------------------------------------------------
    @property
    def name(self) -> str:
        return "mlflow"

    @property
    def version(self) -> str:
        return self.run_id

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Params are logged once, from the resolved config, when the run starts."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        for key, value in metrics.items():
            self._buffer.append(Metric(key, float(value), now, step or 0))
        while len(self._buffer) >= MAX_METRICS_PER_BATCH:
            self._send_batch()

    def save(self) -> None:
        """Lightning asks for this after fit and after test: the points wait for a full batch
        or the end of the run (`finish`), which sends them with everything else."""

    def finalize(self, status: str) -> None:
        """As `save`: a failed stage ends the run through `finish`, which sends the buffer."""

    # Run lifecycle -------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, str]) -> None:
        """Send `params` now, with whatever is buffered."""
        self.add_params(params)
        self.flush()

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Send `tags` now, with whatever is buffered."""
        self.add_tags(tags)
        self.flush()

    def add_params(self, params: Mapping[str, str]) -> None:
        """Params sent with the next batch of points, at the latest when the run ends."""
        self._params.update(params)

    def add_tags(self, tags: Mapping[str, str]) -> None:
        """Tags sent with the next batch of points, at the latest when the run ends."""
        self._tags.update(tags)

    def flush(self) -> None:
        """Send everything buffered, in as few `log_batch` calls as MLflow's limits allow."""
        while self._buffer or self._params or self._tags:
            self._send_batch()

    def _send_batch(self) -> None:
        """One `log_batch` of what is buffered, within MLflow's limits (per kind, in all). What it
        sends leaves the buffers first: a call the store refuses is not sent again by
        `finish`, which must still be able to record the failure."""
        params, self._params = _split(self._params, MAX_PARAMS_PER_BATCH)
        tags, self._tags = _split(self._tags, MAX_TAGS_PER_BATCH)
        room = MAX_ENTITIES_PER_BATCH - len(params) - len(tags)
        metrics = self._buffer[:room]
        del self._buffer[:room]
        self.client.log_batch(
            self.run_id,
            metrics=metrics,
            params=[Param(k, v) for k, v in params.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )

    def finish(self, status: str, outcome: str, error: str | None = None) -> None:
        """Send the buffer with the outcome (and the error, as a tag and an artifact), then
        end the run: its artifacts were logged before this, so a FINISHED run is whole."""
        tags = {schema.OUTCOME: outcome}
        if error:
            tags[schema.ERROR] = error.strip().splitlines()[-1][:500]
        self.set_tags(tags)
        if error:
            self.client.log_text(self.run_id, error, schema.ERROR_TXT)
        self.client.set_terminated(self.run_id, status)


def _split(items: dict[str, str], n: int) -> tuple[dict[str, str], dict[str, str]]:
    """The first `n` entries, and the rest."""
    pairs = list(items.items())
    return dict(pairs[:n]), dict(pairs[n:])


def run_tags(cfg: RunConfig, grid: str, sweep: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The schema's tags known before training (the worker adds harness.accelerator and
    harness.node).

    Besides the cell's identity they hold what a report needs and cannot get from the training
    code: how the task is scored (its metric's name, label, bounds and direction, and the
    task's target) and the run's sweep point (JSON; "{}" outside a sweep).
    """
    task = get_task(cfg.task)
    metric = task.metric
    tags = {
        schema.CELL_ID: cfg.cell_id,
        schema.GRID: grid,
        schema.PHASE: cfg.phase,
        schema.VERSION: harness.__version__,
        schema.METRIC: metric.name,
        schema.METRIC_LABEL: metric.label,
        schema.METRIC_BOUNDS: metric.bounds_text,
        schema.TARGET: f"{task.target:g}",
        schema.HIGHER_IS_BETTER: str(metric.higher_is_better).lower(),
        schema.SWEEP: json.dumps(dict(sweep or {}), sort_keys=True),
    }
    commit = git_commit()
    if commit:
        tags[schema.GIT_COMMIT] = commit
        tags[schema.MLFLOW_GIT_COMMIT] = commit
    return tags


def environment_tags() -> dict[str, str]:
    """Software and hardware of the launching machine, for the report's appendix."""
    env = {
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": str(os.cpu_count()),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return package_versions() | {schema.ENV_PREFIX + key: value for key, value in env.items()}


class StepMetrics(pl.Callback):
    """Per-step training metrics, read back from the device once every `log_every` steps."""

    def __init__(self, log_every: int, tokens_per_batch: int) -> None:
        self.log_every, self.tokens_per_batch = log_every, tokens_per_batch
        self.diverged_at: int | None = None
        self.last_loss: float | None = None
        self._losses: list[torch.Tensor] = []
        self._norms: list[torch.Tensor] = []
        self._lr = 0.0
        self._window_start = 0.0
        self._paused = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._window_start = time.perf_counter()

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self._lr = trainer.optimizers[0].param_groups[0]["lr"]  # the rate this step uses

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, *args: Any
    ) -> None:
        self._losses.append(outputs["loss"].detach())
        self._norms.append(pl_module.last_grad_norm)
        if len(self._losses) >= self.log_every or trainer.global_step >= trainer.max_steps:
            self._drain(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._paused = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Validation time (and the attention diagnostics computed in it) is not training time:
        # move the window's start past it. Inside fit's validation loop `trainer.training` is
        # False (the stage is VALIDATING); the function is still FITTING.
        if trainer.state.fn == TrainerFn.FITTING:
            self._window_start += time.perf_counter() - self._paused

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._losses:
            self._drain(trainer)

    def _drain(self, trainer: pl.Trainer) -> None:
        values = torch.stack([torch.stack(self._losses), torch.stack(self._norms)]).tolist()
        elapsed = time.perf_counter() - self._window_start  # after the read-back: work is done
        n, last_step = len(self._losses), trainer.global_step
        logger = trainer.logger
        for i, (loss, norm) in enumerate(zip(*values, strict=True)):
            step = last_step - n + 1 + i
            logger.log_metrics({schema.TRAIN_LOSS: loss, schema.GRAD_NORM: norm}, step=step)
        logger.log_metrics(
            {
                schema.LR_METRIC: self._lr,
                schema.STEP_MS: 1000.0 * elapsed / n,
                schema.THROUGHPUT: n * self.tokens_per_batch / max(elapsed, 1e-9),
            },
            step=last_step,
        )
        self._losses.clear()
        self._norms.clear()
        self._window_start = time.perf_counter()
        self.last_loss = values[0][-1]
        bad = [i for i, v in enumerate(values[0]) if not math.isfinite(v)]
        if bad and self.diverged_at is None:
            self.diverged_at = last_step - n + 1 + bad[0]
            trainer.should_stop = True
