"""One training run: resolved config -> task data -> Lightning Trainer -> one MLflow run.

Everything the user can get wrong (task parameters, corpus paths, attention parameters) is
checked by `prepare`, before the MLflow run exists, so bad input never leaves a run behind.
`build_module` is where a cell's config becomes objects: the model (`AttentionModel` around
the cell's attention kind), the optimizer and scheduler factories, and the LightningModule
that takes them ready-made.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import pytorch_lightning as pl
import torch
from mlflow import MlflowClient

from harness import schema
from harness.config import RunConfig
from harness.errors import UserError
from harness.models.lightning_module import AttentionTaskModule
from harness.models.transformer import AttentionModel, n_params
from harness.optim import build_optimizer, build_scheduler
from harness.probe import log_attention_figure
from harness.progress import StepProgress, StepReports
from harness.provenance import data_digests, dataset_inputs, run_provenance
from harness.tracking import (
    MlflowRunLogger,
    StepMetrics,
    context_tags,
    environment_tags,
    experiment_id,
    run_tags,
)
from tasks import Task, TaskData, TaskInputError, get_task
from tasks.cache import build_data
from tasks.loaders import EvalBatches, RandomBatches, batch, to_device

DIAGNOSTIC_BATCH_SIZE = 64  # the fixed validation batch of the attention diagnostics


@dataclass(frozen=True)
class RunResult:
    run_id: str
    outcome: str  # "ok" or "diverged"
    metrics: dict[str, float]  # latest val/* and test/* values
    data_info: dict[str, float | int | str]
    seconds: float  # the whole run: data, model, tracking, training, evaluation
    fit_seconds: float  # training steps (and the validations among them) only


def split_sizes(data: TaskData) -> dict[str, int]:
    """Examples (rows of Split.x) in each split, logged as data.n_train/n_val/n_test."""
    return {"n_train": len(data.train), "n_val": len(data.val), "n_test": len(data.test)}


def prepare(cfg: RunConfig) -> tuple[Task, TaskData, AttentionTaskModule]:
    """Build the data and the model, turning the user's mistakes into `UserError`."""
    task = get_task(cfg.task)
    try:
        data = build_data(task, cfg.task_params, cfg.seed)  # once per worker for pure tasks
    except TaskInputError as err:
        raise UserError(str(err)) from None
    try:
        module = build_module(cfg, task, data)
    except ValueError as err:  # attention parameters the kind rejects (e.g. n_heads vs d_model)
        raise UserError(f"attention {cfg.attention}: {err}") from None
    return task, data, module


def build_module(cfg: RunConfig, task: Task, data: TaskData) -> AttentionTaskModule:
    """The cell's model, initialised from its seed, in a LightningModule with its optimizer."""
    torch.manual_seed(cfg.seed)  # parameter initialisation
    model = AttentionModel(
        vocab_size=data.vocab_size,
        n_outputs=data.n_outputs,
        max_len=data.seq_len,
        head=task.kind,
        causal=task.causal,
        attention=cfg.attention,
        attention_params=cfg.attention_params,
        **cfg.model,
    )
    return AttentionTaskModule(
        model,
        task=task,
        optimizer=partial(build_optimizer, cfg.optimizer, lr=cfg.lr, params=cfg.optim),
        scheduler=partial(build_scheduler, total_steps=cfg.steps, params=cfg.optim),
        grad_clip=cfg.optim["grad_clip"],
    )


def train_run(
    cfg: RunConfig,
    *,
    tracking_uri: str,
    experiment: str,
    grid: str = "adhoc",
    parent_run_id: str | None = None,
    accelerator: str = "auto",
    progress: bool = False,
    report: Callable[[int, float], None] | None = None,
) -> RunResult:
    """Check the cell, create its MLflow run, train and evaluate it (`harness train`);
    `report(steps, seconds)` as for `run_cell`."""
    prepared = prepare(cfg)  # the user's mistakes surface here, before any run exists
    client = MlflowClient(tracking_uri)
    exp_id = experiment_id(client, experiment)
    tags = context_tags() | run_tags(cfg, grid) | ({} if parent_run_id else environment_tags())
    logger = MlflowRunLogger.start_run(
        client, exp_id, cfg.run_name, cfg.flat_params(), tags, parent_run_id
    )
    return run_cell(
        cfg, logger, accelerator=accelerator, progress=progress, prepared=prepared, report=report
    )


def run_cell(
    cfg: RunConfig,
    logger: MlflowRunLogger,
    *,
    accelerator: str = "auto",
    progress: bool = False,
    prepared: tuple[Task, TaskData, AttentionTaskModule] | None = None,
    node: str | None = None,
    report: Callable[[int, float], None] | None = None,
) -> RunResult:
    """Train and evaluate one cell into an MLflow run that already exists; `node` names the
    machine it trains on (harness.node; default: this host's name); `report(steps, seconds)`
    hears how far training has come every few seconds (harness.progress.StepReports).

    The run ends FINISHED (outcome ok or diverged), FAILED (the error as tag and artifact,
    then re-raised) or KILLED (on KeyboardInterrupt or SystemExit, re-raised).
    """
    started = time.perf_counter()
    quiet_libraries()
    logger.add_tags({schema.NODE: node or socket.gethostname()})  # sent with the run's points
    try:
        _injected_fault(cfg)
        _, data, module = prepared or prepare(cfg)
        steps_cb = StepMetrics(cfg.train["log_every"], cfg.train["batch_size"] * data.seq_len)
        callbacks: list[pl.Callback] = [steps_cb]
        if progress:
            callbacks.append(StepProgress(cfg.run_name, cfg.steps, steps_cb))
        if report is not None:
            callbacks.append(StepReports(report))
        trainer = _trainer(cfg, accelerator, callbacks)
        trainer.loggers = [logger]
        device = trainer.strategy.root_device
        data_info = data.info | split_sizes(data)
        # Facts known now, sent with the run's points when it ends (MlflowRunLogger.flush)
        logger.add_params({schema.DATA_PREFIX + k: str(v) for k, v in data_info.items()})
        logger.add_params({schema.N_PARAMS: str(n_params(module.model))})
        logger.add_tags({schema.ACCELERATOR: device.type})
        digests = data_digests(data)  # what this process trains on, and its code and software
        logger.add_tags(run_provenance(digests))
        logger.client.log_inputs(logger.run_id, datasets=dataset_inputs(cfg, data, digests))
        outcome, fit_seconds = _fit_and_test(trainer, module, data, cfg, device, steps_cb)
        logger.client.log_text(logger.run_id, _json(cfg.to_dict(), indent=2), schema.CONFIG_JSON)
        if outcome == "ok":
            # 3 numbers per test example: compact JSON (json's C encoder; indent would not be)
            outcomes = _json(module.test_outcomes)
            logger.client.log_text(logger.run_id, outcomes, schema.TEST_OUTCOMES)
            log_attention_figure(logger, module, data, cfg.run_name)
        logger.finish("FINISHED", outcome)
    except (KeyboardInterrupt, SystemExit):
        logger.finish("KILLED", "killed")
        raise
    except Exception:
        logger.finish("FAILED", "failed", traceback.format_exc())
        raise
    seconds = time.perf_counter() - started
    return RunResult(
        logger.run_id, outcome, dict(module.eval_metrics), data_info, seconds, fit_seconds
    )


def _fit_and_test(
    trainer: pl.Trainer,
    module: AttentionTaskModule,
    data: TaskData,
    cfg: RunConfig,
    device: torch.device,
    steps_cb: StepMetrics,
) -> tuple[str, float]:
    """Train, validate at the end, test; returns the outcome and the seconds `fit` took."""
    train = RandomBatches(to_device(data.train, device), cfg.train["batch_size"], cfg.seed)
    val_split = to_device(data.val, device)
    val = EvalBatches(val_split)
    module.diagnostic_batch = batch(val_split, slice(0, DIAGNOSTIC_BATCH_SIZE))
    started = time.perf_counter()
    trainer.fit(module, train_dataloaders=train, val_dataloaders=val)
    fit_seconds = time.perf_counter() - started
    if steps_cb.diverged_at is not None:
        module.logger.add_tags({schema.DIVERGED_AT: str(steps_cb.diverged_at)})
        return "diverged", fit_seconds
    if trainer.global_step % cfg.train["val_every"] != 0:  # always end on a validation
        trainer.validate(module, val, verbose=False)
    trainer.test(module, EvalBatches(to_device(data.test, device)), verbose=False)
    return "ok", fit_seconds


def _trainer(cfg: RunConfig, accelerator: str, callbacks: list[pl.Callback]) -> pl.Trainer:
    return pl.Trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=cfg.steps,
        val_check_interval=cfg.train["val_every"],
        check_val_every_n_epoch=None,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
    )


def _json(value: object, indent: int | None = None) -> str:
    """JSON text of an artifact; compact unless `indent` (config.json is read by people)."""
    return json.dumps(value, indent=indent, separators=None if indent else (",", ":"))


def _injected_fault(cfg: RunConfig) -> None:
    """Fault injection for the fault tests: HARNESS_FAIL_CELLS holds comma-separated
    substrings of run names whose cells raise here, inside the run, as a real bug would."""
    patterns = [p for p in os.environ.get("HARNESS_FAIL_CELLS", "").split(",") if p]
    if any(p in cfg.run_name for p in patterns):
        raise RuntimeError(f"injected failure (HARNESS_FAIL_CELLS) in {cfg.run_name}")


def quiet_libraries() -> None:
    """Lightning's start-up chatter, its advice for big data loaders and MLflow's notes on
    creating a store do not belong on the terminal: the progress bar and the summary do."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`training_step` returned.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
