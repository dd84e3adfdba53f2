"""The run schema: every name the harness writes to MLflow, and the helpers to read runs back.

The contract between training (launcher, workers, `tracking`) and reading (`status`, the
report): both sides import the names from here, so a tag, metric or artifact name is written
once in `harness/`. DESIGN.md's "run schema" section describes what each one means. This module
imports no torch, so the report and `status` can use it without the training stack.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # importing mlflow writes ~/.config/mlflow: not for `harness --help`
    from mlflow import MlflowClient
    from mlflow.entities import Run

# --------------------------------------------------------------------------- tags
CELL_ID = "harness.cell_id"  # stable hash of the normalised cell; absent on a grid's parent
GRID = "harness.grid"  # the grid's name, on the parent and every child
PHASE = "harness.phase"  # tune | final
OUTCOME = "harness.outcome"  # ok | diverged | failed (| killed, set by the launcher)
ERROR = "harness.error"  # the last line of what went wrong
VERSION = "harness.version"
GIT_COMMIT = "harness.git_commit"
# Provenance (harness.provenance): the code and the data a run was made from
CODE_DIGEST = "harness.code_digest"  # sha256 of the training code's source files (16 hex)
DATA_DIGEST = "harness.data_digest"  # sha256 of the run's train, val and test data (16 hex)
HELDOUT_DIGEST = "harness.heldout_digest"  # of its val and test data: one per task setting
MLFLOW_GIT_COMMIT = "mlflow.source.git.commit"  # MLflow's own, so its UI shows the commit
MLFLOW_GIT_PREFIX = "mlflow.source.git."  # MLflow's git tags: commit, branch, repoURL
PARENT = "mlflow.parentRunId"
METRIC = "harness.metric"  # the task's metric name, e.g. "acc" or "bpc"
TARGET = "harness.target"  # the task's target value of that metric
HIGHER_IS_BETTER = "harness.higher_is_better"  # "true" | "false"
METRIC_LABEL = "harness.metric_label"  # how reports name the metric, e.g. "accuracy"
METRIC_BOUNDS = "harness.metric_bounds"  # the metric's range "lo,hi", e.g. "0,1" or "0,inf"
SWEEP = "harness.sweep"  # the run's sweep point as JSON, "{}" outside a sweep
ACCELERATOR = "harness.accelerator"  # cpu | cuda | mps: where the worker trained
# The machine the worker trained on: its host name; on Ray "<host name>/<Ray node id, first 8
# hex>", which tells apart two Ray nodes on one machine. Set by the worker, sent in a batch the
# run sends anyway (no store call of its own).
NODE = "harness.node"
DIVERGED_AT = "harness.diverged_at_step"
RUNG = "harness.rung"  # tune cells under successive halving: "k/n", rung k (from 0) of n
NO_ATTENTION_MAPS = "harness.no_attention_maps"  # why a finished run has no attention_maps.png
NO_ATTENTION_STATS = "harness.no_attention_stats"  # why a run has no attn/* diagnostics
ENV_PREFIX = "env."  # software and hardware versions, on the grid's parent
PACKAGES = ("python", "torch", "pytorch_lightning", "mlflow")  # env.* on every run as well
DATASET_CONTEXT = "mlflow.data.context"  # MLflow's tag on a run's dataset input: its split
SPLITS = ("train", "val", "test")  # a run's data, each split an MLflow dataset input

# MLflow's own tags, set by the harness. On runs: besides PARENT and MLFLOW_GIT_COMMIT, those
# of MLflow's run context (mlflow.user, mlflow.source.name, mlflow.source.type, git branch).
# On experiments the harness creates or launches into: the kind of experiment (what the UI's
# experiment-kind selector writes), and the runs-table view of the last grid launched there.
EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"  # EXPERIMENT_KIND's value for training runs
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."  # + a key that `viewStateShareKey=` names

# --------------------------------------------------------------------------- params
# Besides these, every resolved hyper-parameter as a dotted name ("model.d_model", "optim.*").
TASK, ATTENTION, OPTIMIZER, LR, SEED, PHASE_PARAM = (
    "task", "attention", "optimizer", "lr", "seed", "phase",
)  # fmt: skip
PROTOCOL = "protocol"  # on the parent: the grid's protocol
N_PARAMS = "model.n_params"
D_K = "model.d_k"
DATA_PREFIX = "data."  # facts about the data: n_train, n_val, n_test, chance
N_TRAIN, N_VAL, N_TEST, CHANCE = "data.n_train", "data.n_val", "data.n_test", "data.chance"

# --------------------------------------------------------------------------- metrics
TRAIN_LOSS = "train/loss"  # every step
GRAD_NORM = "grad_norm"  # every step
LR_METRIC = "lr"  # every log_every steps, with the two below
STEP_MS = "time/step_ms"
THROUGHPUT = "throughput/tokens_per_s"
ATTN_PREFIX = "attn/"  # attention diagnostics per layer at step 0 and each validation


def split_metric(split: str, name: str) -> str:
    """`val/loss`, `val/acc`, `test/bpc`: a split's loss (nats) or the task's metric."""
    return f"{split}/{name}"


def val_metric(name: str) -> str:
    return split_metric("val", name)


def test_metric(name: str) -> str:
    return split_metric("test", name)


VAL_LOSS = val_metric("loss")


def attn_logit_std(layer: int) -> str:
    return f"{ATTN_PREFIX}logit_std/layer{layer}"


def attn_entropy(layer: int) -> str:
    return f"{ATTN_PREFIX}entropy/layer{layer}"


# --------------------------------------------------------------------------- artifacts
CONFIG_JSON = "config.json"  # the resolved cell config
TEST_OUTCOMES = "test_outcomes.json"  # per test example: n_tokens, metric_sum, loss_nats
ATTENTION_MAPS = "attention_maps.png"  # the probe batch's attention maps
GRID_YAML = "grid.yaml"  # on the parent: the grid spec as launched
PLAN_JSON = "plan.json"  # on the parent: every cell the grid asks for
ERROR_TXT = "error.txt"  # a failed run's traceback

# --------------------------------------------------------------------------- older runs
# Runs recorded before the metric declared itself (no METRIC_LABEL / METRIC_BOUNDS tags, and
# test_outcomes.json with `correct` instead of `metric_sum`) could name one of two metrics.
# What those names meant, so reports on such runs keep their ranges and test-set intervals.
# New tasks never need an entry here: their runs carry the tags.
LEGACY_METRICS: dict[str, tuple[str, str]] = {  # name -> (label, bounds)
    "acc": ("accuracy", "0,1"),
    "bpc": ("bits per character", "0,inf"),
}


def legacy_metric_sum(outcomes: Mapping[str, Any], metric: str) -> list[float] | None:
    """`metric_sum` of an older test_outcomes.json: correct positions for accuracy, the
    example's nats / ln 2 for bits per character; None for any other metric."""
    if metric == "acc" and "correct" in outcomes:
        return [float(c) for c in outcomes["correct"]]
    if metric == "bpc" and "loss_nats" in outcomes:
        return [float(n) / math.log(2) for n in outcomes["loss_nats"]]
    return None


# --------------------------------------------------------------------------- reading runs
PAGE = 1000  # MLflow's largest page for search_runs
CELL_RUNS = f"tags.`{CELL_ID}` LIKE '%'"  # a filter for the runs of a cell (not a parent)


def grid_filter(grid: str) -> str:
    return f"tags.`{GRID}` = '{grid}'"


def search_all(client: MlflowClient, experiment_id: str, filter_string: str = "") -> list[Run]:
    """Every run of the experiment matching `filter_string`, PAGE at a time."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string, max_results=PAGE, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def experiment_named(client: MlflowClient, name: str, where: str = "the tracking store") -> Any:
    """The experiment called `name`; a UserError (one line) when the store cannot be read or
    holds no such experiment (`where` names the store in that line)."""
    from mlflow.exceptions import MlflowException

    from harness.errors import UserError

    try:
        exp = client.get_experiment_by_name(name)
    except MlflowException as err:
        raise UserError(f"cannot read the tracking store: {err.message.splitlines()[0]}") from None
    if exp is None:
        raise UserError(f"no experiment {name!r} in {where}")
    return exp


def is_cell(run: Run) -> bool:
    """A run of one cell, not a grid's parent run."""
    return CELL_ID in run.data.tags


def finished_by_cell(runs: Iterable[Run]) -> dict[str, Run]:
    """cell_id -> the run that counts for it: its newest FINISHED run."""
    out: dict[str, Run] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        cell = run.data.tags.get(CELL_ID)
        if cell and run.info.status == "FINISHED":
            out[cell] = run
    return out


def sweep_label(sweep: Mapping[str, Any]) -> str:
    """{"model.d_k": 32} -> "model.d_k=32"; "" outside a sweep."""
    return " ".join(f"{key}={value}" for key, value in sorted(sweep.items()))


def group_label(task: str, attention: str, optimizer: str, sweep: Mapping[str, Any]) -> str:
    """e.g. "copy/multihead/adam model.d_k=32": how a comparison group is named everywhere."""
    point = sweep_label(sweep)
    return f"{task}/{attention}/{optimizer}" + (f" {point}" if point else "")


def sweep_of(tags: Mapping[str, str]) -> dict[str, Any]:
    return json.loads(tags.get(SWEEP) or "{}")
