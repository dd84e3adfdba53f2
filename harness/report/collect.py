"""MLflow -> pandas: every run of an experiment, with what the report needs, read page by page.

This module reads only the run schema of DESIGN.md (params, tags, metrics, the parent run's
`grid.yaml` and `plan.json`); it never imports the training code, so it reports on runs made
on any machine. What it returns:

- `runs`: one row per child run (a run with `harness.cell_id`), every status;
- `histories`: long form (run_id, key, step, value) of the final runs' validation metric,
  step time, throughput and attention diagnostics (`attn/*`), for learning curves,
  time-to-target and the diagnostics figure;
- `outcomes`: per final run that has it, its per-example test outcomes (`test_outcomes.json`:
  arrays `n_tokens`, `correct`, `loss_nats`, one entry per test example), for intervals that
  include test-set uncertainty; runs without the artifact (older runs) are simply absent;
- `missing`: the cells of the parent's plan that have no FINISHED run.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from harness.errors import UserError

PAGE = 1000  # runs per search_runs page
HISTORY_THREADS = 8  # concurrent get_metric_history calls (they wait on I/O, not on Python)
STEP_MS, THROUGHPUT = "time/step_ms", "throughput/tokens_per_s"
ATTN_PREFIX = "attn/"  # attn/logit_std/layer<i>, attn/entropy/layer<i>
TEST_OUTCOMES = "test_outcomes.json"  # per-example test outcomes artifact of a tested run
# Rows and legends follow these orders (the registries' own), unknown names after them.
ATTENTION_ORDER = ["dot", "scaled_dot", "additive", "multihead"]
OPTIMIZER_ORDER = ["adam", "adamw", "sgd", "rmsprop"]
HARNESS_RUNS = "tags.`harness.cell_id` LIKE '%'"  # runs of a cell (not a grid's parent)
RUN_COLUMNS = [
    "run_id",
    "run_name",
    "status",
    "outcome",
    "finished",
    "phase",
    "task",
    "attention",
    "optimizer",
    "lr",
    "seed",
    "steps",
    "cell_id",
    "sweep",
    "sweep_values",
    "metric",
    "target",
    "higher_is_better",
    "val",
    "test",
    "error",
    "diverged_at",
    "accelerator",
    "n_params",
    "n_train",
    "n_val",
    "n_test",
    "chance",
    "attn_keys",
    "start_time",
    "end_time",
    "params",
]


@dataclass
class Experiment:
    name: str
    id: str
    ui_url: str  # base address of the MLflow UI that shows this store
    runs: pd.DataFrame
    histories: pd.DataFrame
    missing: pd.DataFrame
    parent: dict[str, Any] = field(default_factory=dict)  # run_id, params, tags, grid_yaml
    # run_id -> {"n_tokens", "correct", "loss_nats"} arrays, for final runs that stored them
    outcomes: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    # env.* tags (software, hardware), harness.version and harness.git_commit: the parent's,
    # or for runs of `harness train` (no parent) the newest run's
    environment: dict[str, str] = field(default_factory=dict)
    plan_known: bool = False  # whether the parent recorded plan.json

    def run_url(self, run_id: str) -> str:
        return f"{self.ui_url}/#/experiments/{self.id}/runs/{run_id}"

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
    exp = find_experiment(client, experiment)
    all_runs = search_all(client, exp.experiment_id)
    children = [r for r in all_runs if "harness.cell_id" in r.data.tags]
    parents = [r for r in all_runs if "harness.cell_id" not in r.data.tags]
    parent, plan = _parent(client, parents[0]) if parents else ({}, None)
    task_order = list(dict.fromkeys(cell["task"] for cell in plan or []))
    runs = runs_frame(children, task_order)
    wanted = runs[(runs.phase == "final") & runs.current & (runs.status == "FINISHED")]
    tested = wanted[wanted.outcome == "ok"]
    total = _history_requests(wanted) + len(tested)
    histories = fetch_histories(client, wanted, _offset(progress, 0, total))
    outcomes = fetch_outcomes(client, tested, _offset(progress, total - len(tested), total))
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
    )


def find_experiment(client: MlflowClient, experiment: str) -> Any:
    """The experiment, checked before any work starts: it exists and has a harness run."""
    try:
        exp = client.get_experiment_by_name(experiment)
    except MlflowException as err:
        raise UserError(f"cannot read the tracking store: {err.message.splitlines()[0]}") from None
    if exp is None:
        raise UserError(f"no experiment {experiment!r} in the tracking store")
    some = client.search_runs([exp.experiment_id], HARNESS_RUNS, max_results=1)
    if not some:
        raise UserError(f"experiment {experiment!r} has no harness runs to report on")
    return exp


def search_all(client: MlflowClient, experiment_id: str) -> list[Run]:
    """Every run of the experiment, PAGE at a time (experiments of many thousands work)."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=PAGE, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def runs_frame(runs: Iterable[Run], task_order: list[str] | None = None) -> pd.DataFrame:
    """One row per run; `current` marks each cell's run that counts (its newest FINISHED one,
    else its newest run), so a failed run that was re-run successfully is not counted twice.

    Rows are ordered by task (`task_order`, the grid's, else by name), sweep point, attention
    kind and optimizer (their registry orders), phase, rate and seed."""
    rows = [_row(run) for run in runs]
    frame = pd.DataFrame(rows, columns=RUN_COLUMNS)
    if frame.empty:
        return frame
    frame = frame.sort_values(["finished", "start_time"], kind="stable")
    frame["current"] = ~frame.duplicated("cell_id", keep="last")
    ranks = {
        "task": task_order or [],
        "attention": ATTENTION_ORDER,
        "optimizer": OPTIMIZER_ORDER,
    }

    def rank(column: pd.Series) -> pd.Series:
        if column.name not in ranks:
            return column
        known = ranks[column.name]
        return column.map(lambda v: (known.index(v), "") if v in known else (len(known), v))

    order = ["task", "sweep", "attention", "optimizer", "phase", "lr", "seed"]
    return frame.sort_values(order, key=rank, kind="stable").reset_index(drop=True)


def _row(run: Run) -> dict[str, Any]:
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    metric = tags.get("harness.metric") or ("bpc" if "val/bpc" in metrics else "acc")
    sweep = json.loads(tags.get("harness.sweep") or "{}")
    status = run.info.status
    outcome = tags.get("harness.outcome") or {"RUNNING": "running", "KILLED": "killed"}.get(
        status, "failed"
    )
    diverged_at = tags.get("harness.diverged_at_step")
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name or "",
        "status": status,
        "outcome": outcome,
        "finished": status == "FINISHED",
        "phase": tags.get("harness.phase") or params.get("phase", ""),
        "task": params.get("task", "?"),
        "attention": params.get("attention", "?"),
        "optimizer": params.get("optimizer", "?"),
        "lr": _float(params.get("lr")),
        "seed": int(params.get("seed", -1)),
        "steps": int(params.get("steps", 0)),
        "cell_id": tags["harness.cell_id"],
        "sweep": sweep_label(sweep),
        "sweep_values": sweep,
        "metric": metric,
        "target": _float(tags.get("harness.target")),
        "higher_is_better": tags.get("harness.higher_is_better", str(metric != "bpc").lower())
        == "true",
        "val": metrics.get(f"val/{metric}", math.nan),
        "test": metrics.get(f"test/{metric}", math.nan),
        "error": tags.get("harness.error", ""),
        "diverged_at": int(diverged_at) if diverged_at else None,
        "accelerator": tags.get("harness.accelerator", ""),
        "n_params": _float(params.get("model.n_params")),
        "n_train": _float(params.get("data.n_train")),
        "n_val": _float(params.get("data.n_val")),
        "n_test": _float(params.get("data.n_test")),
        "chance": _float(params.get("data.chance")),
        "attn_keys": tuple(sorted(k for k in metrics if k.startswith(ATTN_PREFIX))),
        "start_time": run.info.start_time or 0,
        "end_time": run.info.end_time,
        "params": dict(params),
    }


def sweep_label(point: dict[str, Any]) -> str:
    """{"model.d_k": 32} -> "model.d_k=32"; "" outside a sweep."""
    return " ".join(f"{key}={value}" for key, value in sorted(point.items()))


def _float(value: str | None) -> float:
    try:
        return float(value) if value is not None else math.nan
    except ValueError:
        return math.nan


def _history_keys(metric: str, attn_keys: Iterable[str]) -> list[str]:
    return [f"val/{metric}", STEP_MS, THROUGHPUT, *attn_keys]


def _history_requests(runs: pd.DataFrame) -> int:
    return sum(len(_history_keys(m, a)) for m, a in zip(runs.metric, runs.attn_keys, strict=True))


def _offset(
    progress: Callable[[int, int], None] | None, before: int, total: int
) -> Callable[[int, int], None] | None:
    """One progress bar over several fetches: the `before` done earlier count too."""
    if progress is None:
        return None
    return lambda done, _: progress(before + done, total)


def fetch_histories(
    client: MlflowClient,
    runs: pd.DataFrame,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """(run_id, key, step, value) of each run's validation metric, step time, throughput and
    attention diagnostics."""
    attn = runs.attn_keys if "attn_keys" in runs else [()] * len(runs)
    requests = [
        (run_id, key)
        for run_id, metric, keys in zip(runs.run_id, runs.metric, attn, strict=True)
        for key in _history_keys(metric, keys)
    ]
    columns = ["run_id", "key", "step", "value"]
    if not requests:
        return pd.DataFrame(columns=columns)
    rows: list[tuple[str, str, int, float]] = []

    def one(request: tuple[str, str]) -> list[tuple[str, str, int, float]]:
        run_id, key = request
        return [(run_id, key, m.step, m.value) for m in client.get_metric_history(run_id, key)]

    with ThreadPoolExecutor(HISTORY_THREADS) as pool:
        for done, points in enumerate(pool.map(one, requests), start=1):
            rows.extend(points)
            if progress:
                progress(done, len(requests))
    return pd.DataFrame(rows, columns=columns)


def fetch_outcomes(
    client: MlflowClient,
    runs: pd.DataFrame,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """run_id -> the arrays of its `test_outcomes.json`, for the runs that have a readable one
    (downloaded HISTORY_THREADS at a time; a run without it is left out, not an error).

    Only runs of the schema that stores the file are asked (they record `data.n_test`, logged
    with it): asking an older run for a file it cannot have costs a failed download each."""
    runs = runs[runs.n_test.notna()] if "n_test" in runs else runs
    if runs.empty:
        return {}
    _no_download_bars()
    out: dict[str, dict[str, np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as scratch:

        def one(run_id: str) -> tuple[str, dict[str, np.ndarray] | None]:
            folder = os.path.join(scratch, run_id)
            os.makedirs(folder, exist_ok=True)
            local = download_artifact(client, run_id, TEST_OUTCOMES, folder)
            return run_id, parse_outcomes(local) if local else None

        with ThreadPoolExecutor(HISTORY_THREADS) as pool:
            for done, (run_id, parsed) in enumerate(pool.map(one, runs.run_id), start=1):
                if parsed is not None:
                    out[run_id] = parsed
                if progress:
                    progress(done, len(runs))
    return out


def parse_outcomes(path: str) -> dict[str, np.ndarray] | None:
    """The arrays of a `test_outcomes.json`; None when it is unreadable or inconsistent (the
    run's test-set uncertainty is then left out, as for a run without the file)."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
        arrays = {
            "n_tokens": np.asarray(raw["n_tokens"], dtype=float),
            "correct": np.asarray(raw["correct"], dtype=float),
            "loss_nats": np.asarray(raw.get("loss_nats", []), dtype=float),
        }
    except (OSError, ValueError, KeyError, TypeError):
        return None
    n = arrays["n_tokens"].size
    if arrays["correct"].size != n or n == 0:
        return None
    if arrays["loss_nats"].size != n:
        arrays["loss_nats"] = np.full(n, math.nan)
    return arrays


def _environment(run: Run) -> dict[str, str]:
    keep = ("harness.version", "harness.git_commit")
    return {k: v for k, v in run.data.tags.items() if k.startswith("env.") or k in keep}


def _parent(client: MlflowClient, run: Run) -> tuple[dict[str, Any], list[dict] | None]:
    """The parent run's params and tags, its grid.yaml text and its plan (None if absent)."""
    run_id = run.info.run_id
    parent = {
        "run_id": run_id,
        "name": run.info.run_name or "",
        "params": dict(run.data.params),
        "tags": dict(run.data.tags),
        "grid_yaml": _artifact_text(client, run_id, "grid.yaml"),
    }
    plan_text = _artifact_text(client, run_id, "plan.json")
    return parent, json.loads(plan_text) if plan_text else None


def _artifact_text(client: MlflowClient, run_id: str, path: str) -> str | None:
    _no_download_bars()
    try:
        names = {a.path for a in client.list_artifacts(run_id)}
        if path not in names:
            return None
        local = client.download_artifacts(run_id, path)
    except (MlflowException, OSError):
        return None
    with open(local, encoding="utf-8") as handle:
        return handle.read()


def missing_cells(plan: list[dict[str, Any]], runs: pd.DataFrame) -> pd.DataFrame:
    """Planned cells with no FINISHED run, with the state of their latest run if any.

    Cells with a known id (tune cells, and final cells of `fixed` grids) are matched by
    `harness.cell_id`; final cells of a tuned grid, whose rate tuning picks, by group and seed.
    """
    columns = ["group", "phase", "seed", "lr", "state"]
    if not plan:
        return pd.DataFrame(columns=columns)
    by_cell = {r.cell_id: r for r in runs.itertuples() if r.current}
    by_slot = {
        (_group(r.task, r.attention, r.optimizer, r.sweep), r.phase, r.seed): r
        for r in runs.itertuples()
        if r.current
    }
    rows = []
    for cell in plan:
        group = _group(
            cell["task"], cell["attention"], cell["optimizer"], sweep_label(cell["sweep"])
        )
        if cell.get("cell_id"):
            run = by_cell.get(cell["cell_id"])
        else:
            run = by_slot.get((group, cell["phase"], cell["seed"]))
        if run is not None and run.status == "FINISHED":
            continue
        state = "never started" if run is None else run.status.lower()
        rows.append([group, cell["phase"], cell["seed"], cell.get("lr"), state])
    return pd.DataFrame(rows, columns=columns)


def _group(task: str, attention: str, optimizer: str, sweep: str) -> str:
    return f"{task}/{attention}/{optimizer}" + (f" {sweep}" if sweep else "")


def download_artifact(client: MlflowClient, run_id: str, path: str, folder: str) -> str | None:
    """Download one artifact of a run into `folder`; None when the run has no such file."""
    _no_download_bars()
    try:
        return client.download_artifacts(run_id, path, folder)
    except (MlflowException, OSError):
        return None


def _no_download_bars() -> None:
    """MLflow draws a tqdm bar per artifact download; the report has its own progress bar."""
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
