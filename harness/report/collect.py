"""MLflow -> pandas: every run of an experiment, with what the report needs, read page by page.

This module reads only the run schema (`harness.schema`: params, tags, metrics, the parent
run's `grid.yaml` and `plan.json`); it never imports the training code, so it reports on runs
made on any machine. What it returns:

- `runs`: one row per child run (a run with a cell id), every status, with its metric as the
  run declares it: name (tag `harness.metric`), label (`harness.metric_label`), range
  (`harness.metric_bounds`) and direction (`harness.higher_is_better`); runs without those
  tags get neutral defaults (label = name, range unbounded, higher is better);
- `histories`: long form (run_id, key, step, value) of the final runs' validation metric,
  step time, throughput and attention diagnostics (`attn/*`), for learning curves,
  time-to-target and the diagnostics figure;
- `outcomes`: per final run that has it, its per-example test outcomes (`test_outcomes.json`:
  arrays `n_tokens`, `metric_sum`, `loss_nats`, one entry per test example; the test metric
  is sum(metric_sum) / sum(n_tokens)), for intervals that include test-set uncertainty; runs
  without the artifact, or with one lacking `metric_sum` (an older format), are absent;
- `missing`: the cells of the parent's plan that have no FINISHED run;
- `order`: tasks, attention kinds and optimizers in the grid's order (its plan, else its
  grid.yaml), names the grid does not list after them, sorted.

Slightly over 300 lines: the run row, the grid's order and the missing cells read the same
parent run and schema, and stay together; downloads live in `fetch`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run

from harness import schema
from harness.errors import UserError
from harness.report.fetch import (
    artifact_text,
    fetch_histories,
    fetch_outcomes,
    history_requests,
    offset,
)
from harness.ui import run_url

AXES = ("task", "attention", "optimizer")  # what the grid orders; rows and legends follow it
RUN_COLUMNS = [
    "run_id", "run_name", "status", "outcome", "finished", "phase", "task", "attention",
    "optimizer", "lr", "seed", "steps", "cell_id", "sweep", "sweep_values", "metric",
    "metric_label", "metric_low", "metric_high", "target", "higher_is_better", "val", "test",
    "error", "diverged_at", "accelerator", "n_params", "n_train", "n_val", "n_test", "chance",
    "attn_keys", "start_time", "end_time", "params", "git_commit", "code_digest", "data_digest",
    "heldout_digest", *(schema.ENV_PREFIX + package for package in schema.PACKAGES),
]  # fmt: skip


@dataclass(frozen=True)
class Order:
    """The grid's order of tasks, attention kinds and optimizers (the user's, from its spec)."""

    task: tuple[str, ...] = ()
    attention: tuple[str, ...] = ()
    optimizer: tuple[str, ...] = ()

    def of(self, axis: str, values: Iterable[str]) -> list[str]:
        """The distinct `values` in the grid's order for `axis`, unlisted ones after, sorted."""
        known = getattr(self, axis)
        present = list(dict.fromkeys(values))
        return [v for v in known if v in present] + sorted(v for v in present if v not in known)

    def rank(self, axis: str, value: str) -> tuple[int, str]:
        known = getattr(self, axis)
        return (known.index(value), "") if value in known else (len(known), value)


@dataclass
class Experiment:
    name: str
    id: str
    ui_url: str  # base address of the MLflow UI that shows this store
    runs: pd.DataFrame
    histories: pd.DataFrame
    missing: pd.DataFrame
    parent: dict[str, Any] = field(default_factory=dict)  # run_id, params, tags, grid_yaml
    # run_id -> {"n_tokens", "metric_sum", "loss_nats"} arrays, for final runs that stored them
    outcomes: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    # env.* tags (software, hardware), harness.version and harness.git_commit: the parent's,
    # or for runs of `harness train` (no parent) the newest run's
    environment: dict[str, str] = field(default_factory=dict)
    plan_known: bool = False  # whether the parent recorded plan.json
    order: Order = field(default_factory=Order)  # the grid's order of tasks, kinds, optimizers

    def run_url(self, run_id: str) -> str:
        return run_url(self.ui_url, self.id, run_id)

    @property
    def final(self) -> pd.DataFrame:
        """The final-phase runs the comparison rests on: each cell's newest FINISHED run."""
        runs = self.runs
        return runs[(runs.phase == "final") & runs.current & (runs.status == "FINISHED")]

    @property
    def tune(self) -> pd.DataFrame:
        runs = self.runs
        return runs[(runs.phase == "tune") & runs.current & (runs.status == "FINISHED")]


def collect(
    client: MlflowClient,
    experiment: str,
    ui_url: str,
    progress: Callable[[int, int], None] | None = None,
) -> Experiment:
    """Read experiment `experiment`; a UserError when it is unknown or holds no harness run."""
    exp, children, parents, parent, plan = _read(client, experiment)
    order = grid_order(plan, parent.get("grid_yaml"))
    runs = runs_frame(children, order)
    wanted = runs[(runs.phase == "final") & runs.current & (runs.status == "FINISHED")]
    tested = wanted[wanted.outcome == "ok"]
    total = history_requests(wanted) + len(tested)
    histories = fetch_histories(client, wanted, offset(progress, 0, total))
    outcomes = fetch_outcomes(client, tested, offset(progress, total - len(tested), total))
    return Experiment(
        name=exp.name,
        id=exp.experiment_id,
        ui_url=ui_url.rstrip("/"),
        runs=runs,
        histories=histories,
        outcomes=outcomes,
        missing=missing_cells(plan or [], runs),
        parent=parent,
        plan_known=plan is not None,
        environment=_environment(parents[0] if parents else children[0]),
        order=order,
    )


def read_runs(client: MlflowClient, experiment: str) -> pd.DataFrame:
    """Only the `runs` of `collect` (no histories, no outcomes): one row per child run."""
    _, children, _, parent, plan = _read(client, experiment)
    return runs_frame(children, grid_order(plan, parent.get("grid_yaml")))


def _read(
    client: MlflowClient, experiment: str
) -> tuple[Any, list[Run], list[Run], dict[str, Any], list[dict] | None]:
    """The experiment, its child and parent runs, the parent's record and its plan."""
    exp = find_experiment(client, experiment)
    all_runs = schema.search_all(client, exp.experiment_id)
    children = [r for r in all_runs if schema.is_cell(r)]
    parents = [r for r in all_runs if not schema.is_cell(r)]
    parent, plan = _parent(client, parents[0]) if parents else ({}, None)
    return exp, children, parents, parent, plan


def find_experiment(client: MlflowClient, experiment: str) -> Any:
    """The experiment, checked before any work starts: it exists and has a harness run."""
    exp = schema.experiment_named(client, experiment)
    some = client.search_runs([exp.experiment_id], schema.CELL_RUNS, max_results=1)
    if not some:
        raise UserError(f"experiment {experiment!r} has no harness runs to report on")
    return exp


def grid_order(plan: Sequence[dict[str, Any]] | None, grid_yaml: str | None) -> Order:
    """Tasks, attention kinds and optimizers in the order the grid lists them: from its plan
    (cells in grid order), else its grid.yaml (`tasks`, `attention`, `optimizers` entries, each
    a name or a mapping with `name`); empty (sorted names) when neither is readable."""
    if plan:
        return Order(*(tuple(dict.fromkeys(str(c.get(axis)) for c in plan)) for axis in AXES))
    try:
        spec = yaml.safe_load(grid_yaml or "")
    except yaml.YAMLError:
        spec = None
    if not isinstance(spec, dict):
        return Order()

    def names(entries: Any) -> tuple[str, ...]:
        if not isinstance(entries, list):
            return ()
        found = (e.get("name") if isinstance(e, dict) else e for e in entries)
        return tuple(dict.fromkeys(str(n) for n in found if isinstance(n, str)))

    return Order(names(spec.get("tasks")), names(spec.get("attention")),
                 names(spec.get("optimizers")))  # fmt: skip


def runs_frame(runs: Iterable[Run], order: Order | None = None) -> pd.DataFrame:
    """One row per run; `current` marks each cell's run that counts (the schema's
    `finished_by_cell`, else its newest run), so a failed run that was re-run successfully is
    not counted twice.

    Rows are ordered by task, sweep point, attention kind and optimizer (the grid's `order`,
    unlisted names after it), phase, rate and seed."""
    runs = list(runs)
    order = order or Order()
    counted = {r.info.run_id for r in schema.finished_by_cell(runs).values()}
    rows = [_row(run) for run in runs]
    frame = pd.DataFrame(rows, columns=RUN_COLUMNS)
    if frame.empty:
        return frame
    frame = frame.sort_values("start_time", kind="stable")
    newest = ~frame.duplicated("cell_id", keep="last")
    has_finished = frame.cell_id.isin(frame.cell_id[frame.run_id.isin(counted)])
    frame["current"] = frame.run_id.isin(counted) | (newest & ~has_finished)

    def rank(column: pd.Series) -> pd.Series:
        if column.name not in AXES:
            return column
        return column.map(lambda v: order.rank(str(column.name), v))

    keys = ["task", "sweep", "attention", "optimizer", "phase", "lr", "seed"]
    return frame.sort_values(keys, key=rank, kind="stable").reset_index(drop=True)


def _row(run: Run) -> dict[str, Any]:
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    metric = tags.get(schema.METRIC) or _metric_of(metrics)
    legacy_label, legacy_bounds = schema.LEGACY_METRICS.get(metric, (None, None))
    low, high = metric_bounds(tags.get(schema.METRIC_BOUNDS) or legacy_bounds)
    sweep = schema.sweep_of(tags)
    status = run.info.status
    outcome = tags.get(schema.OUTCOME) or {"RUNNING": "running", "KILLED": "killed"}.get(
        status, "failed"
    )
    diverged_at = tags.get(schema.DIVERGED_AT)
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name or "",
        "status": status,
        "outcome": outcome,
        "finished": status == "FINISHED",
        "phase": tags.get(schema.PHASE) or params.get(schema.PHASE_PARAM, ""),
        "task": params.get(schema.TASK, "?"),
        "attention": params.get(schema.ATTENTION, "?"),
        "optimizer": params.get(schema.OPTIMIZER, "?"),
        "lr": _float(params.get(schema.LR)),
        "seed": int(params.get(schema.SEED, -1)),
        "steps": int(params.get("steps", 0)),
        "cell_id": tags[schema.CELL_ID],
        "sweep": schema.sweep_label(sweep),
        "sweep_values": sweep,
        "metric": metric,
        "metric_label": tags.get(schema.METRIC_LABEL) or legacy_label or metric or "score",
        "metric_low": low,
        "metric_high": high,
        "target": _float(tags.get(schema.TARGET)),
        "higher_is_better": tags.get(schema.HIGHER_IS_BETTER, "true").lower() == "true",
        "val": metrics.get(schema.val_metric(metric), math.nan),
        "test": metrics.get(schema.test_metric(metric), math.nan),
        "error": tags.get(schema.ERROR, ""),
        "diverged_at": int(diverged_at) if diverged_at else None,
        "accelerator": tags.get(schema.ACCELERATOR, ""),
        "n_params": _float(params.get(schema.N_PARAMS)),
        "n_train": _float(params.get(schema.N_TRAIN)),
        "n_val": _float(params.get(schema.N_VAL)),
        "n_test": _float(params.get(schema.N_TEST)),
        "chance": _float(params.get(schema.CHANCE)),
        "attn_keys": tuple(sorted(k for k in metrics if k.startswith(schema.ATTN_PREFIX))),
        "start_time": run.info.start_time or 0,
        "end_time": run.info.end_time,
        "params": dict(params),
        # provenance (harness.provenance): "" where the run did not record it
        "git_commit": tags.get(schema.GIT_COMMIT, ""),
        "code_digest": tags.get(schema.CODE_DIGEST, ""),
        "data_digest": tags.get(schema.DATA_DIGEST, ""),
        "heldout_digest": tags.get(schema.HELDOUT_DIGEST, ""),
        # the versions of Python, torch, ... that trained it ("env.python": "3.11.7")
        **{key: tags.get(key, "") for key in RUN_COLUMNS if key.startswith(schema.ENV_PREFIX)},
    }


def _metric_of(metrics: dict[str, float]) -> str:
    """A run without the metric tag (older runs): the one test or validation metric it logged
    besides the loss; "" when there is none, or more than one."""
    splits = (schema.test_metric(""), schema.val_metric(""))  # "test/", "val/"
    loss = schema.VAL_LOSS.removeprefix(schema.val_metric(""))
    names = {key.split("/", 1)[1] for key in metrics if key.startswith(splits)} - {loss}
    return names.pop() if len(names) == 1 else ""


def metric_bounds(text: str | None) -> tuple[float, float]:
    """ "0,1" -> (0.0, 1.0); "0,inf" -> (0.0, inf); unreadable or absent -> (-inf, inf)."""
    try:
        low, high = (float(part) for part in (text or "").split(","))
    except ValueError:
        return -math.inf, math.inf
    if math.isnan(low) or math.isnan(high) or low > high:
        return -math.inf, math.inf
    return low, high


def _float(value: str | None) -> float:
    try:
        return float(value) if value is not None else math.nan
    except ValueError:
        return math.nan


def _environment(run: Run) -> dict[str, str]:
    keep = (schema.VERSION, schema.GIT_COMMIT)
    return {k: v for k, v in run.data.tags.items() if k.startswith(schema.ENV_PREFIX) or k in keep}


def _parent(client: MlflowClient, run: Run) -> tuple[dict[str, Any], list[dict] | None]:
    """The parent run's params and tags, its grid.yaml text and its plan (None if absent)."""
    run_id = run.info.run_id
    parent = {
        "run_id": run_id,
        "name": run.info.run_name or "",
        "params": dict(run.data.params),
        "tags": dict(run.data.tags),
        "grid_yaml": artifact_text(client, run_id, schema.GRID_YAML),
    }
    plan_text = artifact_text(client, run_id, schema.PLAN_JSON)
    return parent, json.loads(plan_text) if plan_text else None


def missing_cells(plan: list[dict[str, Any]], runs: pd.DataFrame) -> pd.DataFrame:
    """Planned cells with no FINISHED run, with the state of their latest run if any.

    Cells with a known id (first-rung tune cells, and final cells of `fixed` grids) are
    matched by cell id. Cells whose rate the results pick (final cells of a tuned grid, later
    rungs of successive halving) are matched by group, phase, seed and steps, one run each.
    """
    columns = ["group", "phase", "seed", "lr", "state"]
    if not plan:
        return pd.DataFrame(columns=columns)
    current = [r for r in runs.itertuples() if r.current]
    by_cell = {r.cell_id: r for r in current}
    by_slot: dict[tuple[Any, ...], list[Any]] = {}
    for r in current:  # FINISHED first: a slot's finished runs count before its failed ones
        label = schema.group_label(r.task, r.attention, r.optimizer, r.sweep_values)
        for key in ((label, r.phase, r.seed, r.steps), (label, r.phase, r.seed, None)):
            by_slot.setdefault(key, []).append(r)
    for slot in by_slot.values():
        slot.sort(key=lambda r: r.status != "FINISHED")
    rows = []
    for cell in plan:
        group = schema.group_label(
            cell["task"], cell["attention"], cell["optimizer"], cell.get("sweep") or {}
        )
        if cell.get("cell_id"):
            run = by_cell.get(cell["cell_id"])
        else:  # plans written before successive halving have no steps
            slot = by_slot.get((group, cell["phase"], cell["seed"], cell.get("steps")), [])
            run = slot.pop(0) if slot else None
        if run is not None and run.status == "FINISHED":
            continue
        state = "never started" if run is None else run.status.lower()
        rows.append([group, cell["phase"], cell["seed"], cell.get("lr"), state])
    return pd.DataFrame(rows, columns=columns)
