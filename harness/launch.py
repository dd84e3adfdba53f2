"""The scheduler of a grid: queue cells against what MLflow already holds, hand them to a
backend's `Pool`, record what comes back.

The launcher creates the experiment, the grid's parent run and every child run, and is the
only process that writes a local store: workers send their metric batches, tags and artifacts
back as typed writes (harness.backends.base). Re-running a grid skips every cell (by its cell
id) that already has a FINISHED run; runs left RUNNING by a killed launcher or worker are
marked KILLED and their cells run again. A FINISHED run made by other code or on other data
(harness.provenance) is reused all the same, with one line saying so, unless `rerun_changed`
asks to train its cell again. Each time a tune cell ends, `protocol_step`
(harness.grid) is asked again; it answers with the next rung's tune cells once a rung of
successive halving is complete, and once the group's tuning is complete with the chosen rate
and the final cells; new cells join the queue. Workers say every few seconds how far their
cell has come (`Steps`); the progress bar (harness.progress.GridProgress) counts those steps
against the plan's.

When the store cannot be written the grid stops rather than fail every cell that follows:
- a tracking server that stays unreachable past the deadline of harness.retry (a server
  that comes back in time only delays the grid);
- an artifact that cannot be written (the artifact root is not a writable folder, the disk
  is full): the root is shared by every run, so the next cell would fail the same way. The
  cell whose artifact failed ends FAILED with the error as `harness.error`.
Either way the workers are stopped, the other running cells are marked KILLED (when the
store can be reached), one line says what happened (`GridStopped`, exit 2 like an
unreachable store at start: the user fixes the store, not the grid), and the same command
resumes.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.entities import Run, RunTag
from mlflow.exceptions import MlflowException
from rich.console import Console

import harness
from harness import schema
from harness.backends import make_pool
from harness.backends.base import Done, Event, Job, LogArtifact, Lost, Steps
from harness.config import RunConfig
from harness.errors import UserError
from harness.grid import (
    Group,
    TuneResult,
    groups,
    plan_json,
    planned_cells,
    protocol_step,
    tune_rungs,
)
from harness.progress import GridProgress
from harness.provenance import ReuseCheck
from harness.retry import RetryingClient, TrackingUnreachable, tracking_deadline
from harness.spec import GridSpec
from harness.store import is_http
from harness.tracking import (
    MlflowRunLogger,
    context_tags,
    environment_tags,
    experiment_id,
    git_commit,
    run_tags,
)
from harness.ui import VIEW_TAG, grid_view
from tasks import get_task


class ArtifactWriteError(UserError):
    """An artifact could not be written to the experiment's artifact root."""

    def __init__(self, run_id: str, root: str, err: Exception) -> None:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        super().__init__(f"cannot write artifacts under {root} ({reason.splitlines()[0]})")
        self.run_id = run_id


class GridStopped(UserError):
    """The grid stopped because the store cannot be written; the same command resumes it."""


@dataclass
class GridOutcome:
    """What one launch did, per phase: outcome -> count (`skipped` = FINISHED before)."""

    counts: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    chosen_lr: dict[Group, float] = field(default_factory=dict)
    seconds: float = 0.0
    # Per finished cell: seconds in the worker that were not training steps (data, model,
    # trainer, final evaluation, attention figure), and the launcher's seconds creating its
    # run and writing what the worker sent.
    worker_overhead: dict[str, float] = field(default_factory=dict)  # run id -> seconds
    launcher_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @property
    def fixed_cost_per_cell(self) -> float | None:
        """Median of worker overhead + launcher writes over the cells of this launch."""
        costs = [w + self.launcher_seconds[r] for r, w in self.worker_overhead.items()]
        return statistics.median(costs) if costs else None

    @property
    def failed(self) -> int:
        return sum(c["failed"] + c["killed"] for c in self.counts.values())


@dataclass(frozen=True)
class _Started:
    """A cell whose run exists: what its results are read with."""

    cfg: RunConfig
    group: Group
    metric: str  # the name of its task's metric, as its run's tags say


# --------------------------------------------------------------------------- the launcher


class Launcher:
    def __init__(
        self,
        spec: GridSpec,
        client: MlflowClient,
        experiment: str,
        workers: int | None,  # None: the backend's default
        accelerator: str,
        console: Console,
        progress: bool,
        backend: str = "local",
        backend_options: Mapping[str, Any] | None = None,  # the backend's own (`ray_address`)
        deadline: float | None = None,  # s a tracking server may stay away (harness.retry)
        rerun_changed: bool = False,  # train again finished cells of other code or data
    ) -> None:
        self.spec, self.console = spec, console
        self.client = _patient(client, console, deadline)
        self.workers, self.accelerator, self.show_progress = workers, accelerator, progress
        self.backend, self.backend_options = backend, dict(backend_options or {})
        self.exp_id = experiment_id(self.client, experiment)
        self.outcome = GridOutcome()
        self.groups = groups(spec)
        self.pending: list[tuple[RunConfig, Group]] = []
        self.in_flight: dict[str, _Started] = {}  # run id -> its cell, from create_run on
        self.tune_results: dict[Group, list[TuneResult]] = defaultdict(list)
        self.released: set[Group] = set()  # groups whose final cells are queued
        self.queued: set[str] = set()  # cell ids queued or skipped in this launch
        self.rerun_changed = rerun_changed
        self.changed: list[tuple[str, Mapping[str, str]]] = []  # ("code" | "data", run tags)
        self._told = 0  # how many of them a line has named
        # Training steps per group, for the progress bar: planned (as harness.grid.plan counts
        # them), and of the cells queued or skipped so far
        self.planned_steps: dict[Group, int] = defaultdict(int)
        self.queued_steps: dict[Group, int] = defaultdict(int)
        self.held: set[Group] = set()  # groups whose tuning lost a cell: no more cells now

    # planning --------------------------------------------------------------------------
    def prepare(self) -> None:
        self.context = context_tags()  # MLflow's run context, once per launch
        runs = schema.search_all(self.client, self.exp_id, schema.grid_filter(self.spec.name))
        self.parent_id = self._parent(runs)
        # The view `harness ui EXPERIMENT` opens: this grid's final runs, columns to compare
        metrics = [get_task(task.name).metric.name for task in self.spec.tasks]
        self.client.set_experiment_tag(self.exp_id, VIEW_TAG, grid_view(metrics, self.spec.sweep))
        self._mark_stale(runs)
        self.done = schema.finished_by_cell(runs)
        self.reuse = ReuseCheck(git_commit())
        planned = planned_cells(self.spec)
        for cell in planned:
            self.planned_steps[cell.group] += cell.cfg.steps
        self.total = len(planned)
        steps = sum(self.planned_steps.values())
        self.bar = GridProgress(self.spec.name, self.total, steps, self.console, self.show_progress)
        for group in self.groups:
            self._release(group)
        self._tell_changed()

    def _queue(self, cells: list[RunConfig], group: Group) -> None:
        """Cells without a FINISHED run wait for a worker; the others are skipped, and a
        skipped tune cell's result is read back from its run. A FINISHED run of other code or
        data is noted, and its cell waits for a worker too with `rerun_changed`."""
        for cfg in cells:
            self.queued.add(cfg.cell_id)
            self.queued_steps[group] += cfg.steps
            run = self.done.get(cfg.cell_id)
            why = None if run is None else self.reuse.changed(cfg, run.data.tags)
            if why:
                self.changed.append((why, run.data.tags))
            if run is None or (why and self.rerun_changed):
                self.pending.append((cfg, group))
            else:
                self.outcome.counts[cfg.phase]["skipped"] += 1
                self.bar.skipped(cfg.steps)
                if cfg.phase == "tune":
                    self.tune_results[group].append(TuneResult.from_run(cfg, run))

    def _tell_changed(self) -> None:
        """One line about the changed cells found since the last such line, if any."""
        news: dict[str, list[Mapping[str, str]]] = defaultdict(list)
        for why, tags in self.changed[self._told :]:
            news[why].append(tags)
        if news:
            line = self.reuse.line(news, self.rerun_changed)
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)
            self._told = len(self.changed)

    def _release(self, group: Group) -> None:
        """Queue the tune cells the protocol asks for and, once it knows their rate, the
        group's final cells. A rung whose cells all finished in an earlier launch is read back
        at once, so the protocol is asked again until it asks for nothing new."""
        if group in self.released:
            return
        while True:
            step = protocol_step(self.spec, group, self.tune_results[group])
            new = [cfg for cfg in step.tune if cfg.cell_id not in self.queued]
            if not new:
                break
            self._queue(new, group)
        if step.lr is None:
            return
        self.released.add(group)
        if step.tune:
            self.outcome.chosen_lr[group] = step.lr
        self._queue(step.final, group)

    def _parent(self, runs: list[Run]) -> str:
        """The grid's parent run, reused across launches; the spec and the plan logged with it."""
        parents = [r for r in runs if not schema.is_cell(r)]
        if parents:
            parent_id = parents[0].info.run_id
            self.client.update_run(parent_id, status="RUNNING")
        else:
            tags = self.context | {schema.GRID: self.spec.name, schema.VERSION: harness.__version__}
            if git_commit():
                tags[schema.GIT_COMMIT] = git_commit()
            run = self.client.create_run(self.exp_id, run_name=self.spec.name, tags=tags)
            parent_id = run.info.run_id
            self.client.log_param(parent_id, schema.PROTOCOL, self.spec.protocol)
        self.client.log_batch(parent_id, tags=[RunTag(k, v) for k, v in environment_tags().items()])
        spec_yaml = yaml.safe_dump(self.spec.model_dump(mode="json"), sort_keys=False)
        try:
            self.client.log_text(parent_id, spec_yaml, schema.GRID_YAML)
            self.client.log_dict(parent_id, plan_json(self.spec), schema.PLAN_JSON)
        except (OSError, MlflowException) as err:  # before any cell: nothing else to stop
            self.client.set_terminated(parent_id, "KILLED")
            raise ArtifactWriteError(parent_id, self._artifact_root(), err) from None
        return parent_id

    def _artifact_root(self) -> str:
        return self.client.get_experiment(self.exp_id).artifact_location

    def _mark_stale(self, runs: list[Run]) -> None:
        """Runs left RUNNING by a launcher or worker that was killed will never end: mark them."""
        for run in runs:
            if run.info.status == "RUNNING" and schema.is_cell(run):
                self.client.set_terminated(run.info.run_id, "KILLED")
                self.outcome.counts[run.data.tags.get(schema.PHASE, "?")]["stale"] += 1

    # running ---------------------------------------------------------------------------
    def run(self) -> GridOutcome:
        started = time.perf_counter()
        if not self.pending:  # every cell has a FINISHED run: no worker to start
            self.client.set_terminated(self.parent_id, "FINISHED")
            self.outcome.seconds = time.perf_counter() - started
            return self.outcome
        pool = make_pool(
            self.backend, self.workers, self.accelerator, self.client.tracking_uri,
            self.backend_options,
        )  # fmt: skip
        try:
            with self.bar:
                while self.pending or self.in_flight:
                    while self.pending and pool.idle:
                        pool.submit(self._start(*self.pending.pop(0)))
                    for event in pool.poll(timeout=0.5):
                        self._handle(event)
                    self.bar.update(self.outcome.counts, running=len(self.in_flight))
        except TrackingUnreachable as err:  # nothing can be marked: the next launch does it
            pool.shutdown(kill=True)
            raise GridStopped(_stopped(err, list(self.in_flight))) from None
        except ArtifactWriteError as err:
            pool.shutdown(kill=True)
            self._fail(err.run_id, str(err))
            self._interrupted([run_id for run_id in self.in_flight if run_id != err.run_id])
            raise GridStopped(_stopped(err, list(self.in_flight), failed=err.run_id)) from None
        except BaseException:
            pool.shutdown(kill=True)
            self._interrupted(list(self.in_flight))
            raise
        pool.shutdown()
        self._tell_changed()  # cells queued as tuning ended, skipped: after the progress bar
        self.client.set_terminated(self.parent_id, "FINISHED")
        self.outcome.seconds = time.perf_counter() - started
        return self.outcome

    def _start(self, cfg: RunConfig, group: Group) -> Job:
        started = time.perf_counter()
        tags = self.context | run_tags(cfg, self.spec.name, group.sweep)
        if cfg.phase == "tune" and self.spec.tuning.scheduler == "halving":
            budgets = [steps for steps, _ in tune_rungs(self.spec, group)]
            tags[schema.RUNG] = f"{budgets.index(cfg.steps)}/{len(budgets)}"
        logger = MlflowRunLogger.create(
            self.client, self.exp_id, cfg.run_name_at(group.sweep), tags, self.parent_id
        )
        # RUNNING in the store from here on: every stop marks it
        self.in_flight[logger.run_id] = _Started(cfg, group, tags.get(schema.METRIC, ""))
        logger.log_params(cfg.flat_params())
        self.outcome.launcher_seconds[logger.run_id] += time.perf_counter() - started
        return Job(cfg.to_dict(), logger.run_id)

    def _interrupted(self, run_ids: list[str]) -> None:
        """Every run created and not yet ended (`in_flight`: a worker's, or one still being
        started here) is KILLED."""
        for run_id in run_ids:
            self.client.set_terminated(run_id, "KILLED")
        self.client.set_terminated(self.parent_id, "KILLED")

    def _fail(self, run_id: str, error: str) -> None:
        tags = {schema.OUTCOME: "failed", schema.ERROR: error}
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.set_terminated(run_id, "FAILED")

    def _handle(self, event: Event) -> None:
        if isinstance(event, Steps):  # how far a running cell has come
            if event.run_id in self.in_flight:
                self.bar.trained(event.run_id, event.steps, event.seconds)
            return
        if not isinstance(event, Done | Lost):  # a write a worker made
            started = time.perf_counter()
            try:
                event.apply(self.client)
            except (OSError, MlflowException) as err:
                if not isinstance(event, LogArtifact):
                    raise
                raise ArtifactWriteError(event.run_id, self._artifact_root(), err) from None
            self.outcome.launcher_seconds[event.run_id] += time.perf_counter() - started
            return
        cell = self.in_flight[event.run_id]
        cfg = cell.cfg
        if isinstance(event, Lost):
            self.client.set_tag(event.run_id, schema.ERROR, event.reason)
            self.client.set_terminated(event.run_id, "KILLED")
            outcome, value, loss = "killed", None, None
        else:
            outcome = event.outcome
            value = event.metrics.get(schema.val_metric(cell.metric))
            loss = event.metrics.get(schema.VAL_LOSS)
            if outcome != "failed":
                self.outcome.worker_overhead[event.run_id] = event.seconds - event.fit_seconds
        del self.in_flight[event.run_id]  # ended in the store
        self.outcome.counts[cfg.phase][outcome] += 1
        self.bar.ended(event.run_id, cfg.steps, complete=outcome == "ok")
        if cfg.phase == "tune" and outcome in ("ok", "diverged"):
            # A failed or lost tune cell has no result: its group's final cells wait for the
            # next launch, which runs the cell again (as `status` counts it), so a group never
            # gets final runs at two rates.
            ok = outcome == "ok"
            result = TuneResult(
                cfg.lr, cfg.seed, cfg.steps, value if ok else None, loss if ok else None
            )
            self.tune_results[cell.group].append(result)
            self._release(cell.group)
        elif cfg.phase == "tune":
            self._hold(cell.group)

    def _hold(self, group: Group) -> None:
        """A tune cell of `group` failed or was lost: the group runs no more cells in this
        launch (its next rung or final cells wait for a result the cell never gave), so their
        steps leave the progress bar's total."""
        if group in self.held:
            return
        self.held.add(group)
        self.bar.drop(self.planned_steps[group] - self.queued_steps[group])


def _patient(client: MlflowClient, console: Console, deadline: float | None) -> MlflowClient:
    """A tracking server can go away and come back: its client retries, up to a deadline,
    saying so on the console. A local store is used as it is."""
    if not is_http(client.tracking_uri):
        return client

    def warn(line: str) -> None:
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    deadline = tracking_deadline() if deadline is None else deadline
    return RetryingClient(client, deadline, warn)  # type: ignore[return-value]


def _stopped(err: Exception, running: list[str], failed: str | None = None) -> str:
    """One line: why the grid stopped, what it interrupted, how to go on."""
    n = sum(run_id != failed for run_id in running)
    cells = f"{n} running cell was" if n == 1 else f"{n} running cells were"
    return f"{err}; {cells} interrupted; run the same command again to resume"
