"""Run a grid: plan against what MLflow already holds, hand cells to a backend, record results.

The launcher creates the experiment, the grid's parent run and every child run, and is the
only process that writes the store: workers send their metric batches, tags and artifacts
back (see harness.backends.local). Re-running a grid skips every cell (by `harness.cell_id`)
that already has a FINISHED run; runs left RUNNING by a killed launcher or worker are marked
KILLED and their cells run again. With `tune_then_final`, a group's final cells are released
as soon as its last tuning cell is done, at the learning rate `choose_lr` picks.

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

import json
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.entities import Run, RunTag
from mlflow.exceptions import MlflowException
from rich.console import Console

import harness
from harness.backends import make_pool
from harness.backends.local import Done, Job, Lost, apply_op
from harness.config import RunConfig
from harness.errors import UserError
from harness.grid import Group, TuneResult, choose_lr, final_cells, groups, tune_cells
from harness.progress import GridProgress
from harness.retry import RetryingClient, TrackingUnreachable, tracking_deadline
from harness.spec import GridSpec
from harness.store import is_http
from harness.tracking import (
    MlflowRunLogger,
    environment_tags,
    experiment_id,
    git_commit,
    run_tags,
)
from tasks import get_task

PAGE = 1000


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


# --------------------------------------------------------------------------- reading MLflow


def grid_runs(client: MlflowClient, exp_id: str, grid: str | None) -> list[Run]:
    """Every run of the grid (parent and children), or of the experiment, page by page."""
    runs: list[Run] = []
    token = None
    query = "" if grid is None else f"tags.`harness.grid` = '{grid}'"
    while True:
        page = client.search_runs([exp_id], query, max_results=PAGE, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def finished_by_cell(runs: list[Run]) -> dict[str, Run]:
    """cell_id -> its FINISHED run (the newest, should there be several)."""
    out: dict[str, Run] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        cell = run.data.tags.get("harness.cell_id")
        if cell and run.info.status == "FINISHED":
            out[cell] = run
    return out


def tune_result(cfg: RunConfig, run: Run) -> TuneResult:
    """A finished tuning run's last validation value; None when it diverged."""
    metric = f"val/{get_task(cfg.task).metric}"
    value = run.data.metrics.get(metric)
    if run.data.tags.get("harness.outcome") != "ok":
        value = None
    return TuneResult(cfg.lr, cfg.seed, value, run.data.metrics.get("val/loss"))


def grid_plan(spec: GridSpec) -> list[dict[str, Any]]:
    """Every cell the grid asks for, logged with the parent run as plan.json so that a report
    can list missing cells without the training code. Final cells of a tuned grid have no rate
    (and no cell id) until tuning picks one: they are known by group, phase and seed."""
    cells = []
    for group in groups(spec):
        tune = tune_cells(spec, group)
        for cfg in tune + final_cells(spec, group, group.fixed_lr):
            known = cfg.phase == "tune" or not tune
            cells.append(
                {
                    "group": group.label,
                    "task": group.task,
                    "attention": group.attention,
                    "optimizer": group.optimizer,
                    "sweep": dict(group.sweep),
                    "phase": cfg.phase,
                    "seed": cfg.seed,
                    "lr": cfg.lr if known else None,
                    "cell_id": cfg.cell_id if known else None,
                    "run_name": cfg.run_name if known else None,
                }
            )
    return cells


# --------------------------------------------------------------------------- checks


def check_cells(spec: GridSpec) -> None:
    """Build every distinct task's data and model once, so bad values stop the grid before
    any run exists (task parameters, corpus paths, attention parameters)."""
    from harness.train import prepare

    seen: set[str] = set()
    for group in groups(spec):
        cfg = _any_cell(spec, group)
        key = json.dumps([cfg.task_params, cfg.task, cfg.model, cfg.attention_params])
        if key not in seen:
            seen.add(key)
            try:
                prepare(cfg)
            except UserError as err:
                raise UserError(f"{group.label}: {err}") from None


def _any_cell(spec: GridSpec, group: Group) -> RunConfig:
    return final_cells(spec, group, group.fixed_lr)[0]


# --------------------------------------------------------------------------- the launcher


class Launcher:
    def __init__(
        self,
        spec: GridSpec,
        client: MlflowClient,
        experiment: str,
        workers: int,
        accelerator: str,
        console: Console,
        progress: bool,
        backend: str = "local",
        ray_address: str | None = None,
        deadline: float | None = None,  # s a tracking server may stay away (harness.retry)
    ) -> None:
        self.spec, self.console = spec, console
        self.client = _patient(client, console, deadline)
        self.workers, self.accelerator, self.show_progress = workers, accelerator, progress
        self.backend, self.ray_address = backend, ray_address
        self.exp_id = experiment_id(self.client, experiment)
        self.outcome = GridOutcome()
        self.groups = groups(spec)
        self.pending: list[tuple[RunConfig, Group]] = []
        self.in_flight: dict[str, tuple[RunConfig, Group]] = {}
        self.tune_left: dict[Group, int] = {}
        self.tune_results: dict[Group, list[TuneResult]] = defaultdict(list)

    # planning --------------------------------------------------------------------------
    def prepare(self) -> None:
        runs = grid_runs(self.client, self.exp_id, self.spec.name)
        self.parent_id = self._parent(runs)
        self._mark_stale(runs)
        self.done = finished_by_cell(runs)
        for group in self.groups:
            cells = tune_cells(self.spec, group)
            if not cells:  # fixed protocol
                self._queue(final_cells(self.spec, group, group.fixed_lr), group)
                continue
            self.tune_left[group] = len(cells)
            self._queue(cells, group)
        final_per_group = len(self.spec.seeds.final)
        self.total = sum(len(tune_cells(self.spec, g)) + final_per_group for g in self.groups)

    def _queue(self, cells: list[RunConfig], group: Group) -> None:
        for cfg in cells:
            run = self.done.get(cfg.cell_id)
            if run is None:
                self.pending.append((cfg, group))
            else:
                self.outcome.counts[cfg.phase]["skipped"] += 1
                if cfg.phase == "tune":
                    self._tuned(group, tune_result(cfg, run))

    def _tuned(self, group: Group, result: TuneResult) -> None:
        self.tune_results[group].append(result)
        self.tune_left[group] -= 1
        if self.tune_left[group] == 0:
            order = [c.lr for c in tune_cells(self.spec, group)]
            results = sorted(self.tune_results[group], key=lambda r: order.index(r.lr))
            lr = choose_lr(results, get_task(group.task).higher_is_better)
            self.outcome.chosen_lr[group] = lr
            self._queue(final_cells(self.spec, group, lr), group)

    def _parent(self, runs: list[Run]) -> str:
        """The grid's parent run, reused across launches; the spec logged as grid.yaml."""
        parents = [r for r in runs if "harness.cell_id" not in r.data.tags]
        if parents:
            parent_id = parents[0].info.run_id
            self.client.update_run(parent_id, status="RUNNING")
        else:
            tags = {"harness.grid": self.spec.name, "harness.version": harness.__version__}
            if git_commit():
                tags["harness.git_commit"] = git_commit()
            run = self.client.create_run(self.exp_id, run_name=self.spec.name, tags=tags)
            parent_id = run.info.run_id
            self.client.log_param(parent_id, "protocol", self.spec.protocol)
        self.client.log_batch(parent_id, tags=[RunTag(k, v) for k, v in environment_tags().items()])
        spec_yaml = yaml.safe_dump(self.spec.model_dump(mode="json"), sort_keys=False)
        try:
            self.client.log_text(parent_id, spec_yaml, "grid.yaml")
            self.client.log_dict(parent_id, grid_plan(self.spec), "plan.json")
        except (OSError, MlflowException) as err:  # before any cell: nothing else to stop
            self.client.set_terminated(parent_id, "KILLED")
            raise ArtifactWriteError(parent_id, self._artifact_root(), err) from None
        return parent_id

    def _artifact_root(self) -> str:
        return self.client.get_experiment(self.exp_id).artifact_location

    def _mark_stale(self, runs: list[Run]) -> None:
        """Runs left RUNNING by a launcher or worker that was killed will never end: mark them."""
        for run in runs:
            if run.info.status == "RUNNING" and "harness.cell_id" in run.data.tags:
                self.client.set_terminated(run.info.run_id, "KILLED")
                self.outcome.counts[run.data.tags.get("harness.phase", "?")]["stale"] += 1

    # running ---------------------------------------------------------------------------
    def run(self) -> GridOutcome:
        started = time.perf_counter()
        pool = make_pool(
            self.backend, self.workers, self.accelerator, self.client.tracking_uri,
            self.ray_address,
        )  # fmt: skip
        bar = GridProgress(self.spec.name, self.total, self.console, self.show_progress)
        try:
            with bar:
                while self.pending or self.in_flight:
                    while self.pending and pool.idle:
                        pool.submit(self._start(*self.pending.pop(0)))
                    for event in pool.poll(timeout=0.5):
                        self._handle(event)
                    bar.update(self.outcome.counts, running=len(self.in_flight))
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
        self.client.set_terminated(self.parent_id, "FINISHED")
        self.outcome.seconds = time.perf_counter() - started
        return self.outcome

    def _start(self, cfg: RunConfig, group: Group) -> Job:
        started = time.perf_counter()
        tags = run_tags(cfg, self.spec.name, group.sweep)
        logger = MlflowRunLogger.create(self.client, self.exp_id, cfg.run_name, tags, self.parent_id)
        self.in_flight[logger.run_id] = (cfg, group)  # RUNNING in the store from here on
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
        tags = {"harness.outcome": "failed", "harness.error": error}
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.set_terminated(run_id, "FAILED")

    def _handle(self, event: tuple[str, str, Any] | Done | Lost) -> None:
        if isinstance(event, tuple):
            started = time.perf_counter()
            try:
                apply_op(self.client, *event)
            except (OSError, MlflowException) as err:
                if event[0] != "artifact":
                    raise
                raise ArtifactWriteError(event[1], self._artifact_root(), err) from None
            self.outcome.launcher_seconds[event[1]] += time.perf_counter() - started
            return
        cfg, group = self.in_flight[event.run_id]
        if isinstance(event, Lost):
            self.client.set_tag(event.run_id, "harness.error", event.reason)
            self.client.set_terminated(event.run_id, "KILLED")
            outcome, value = "killed", None
        else:
            outcome = event.outcome
            value = event.metrics.get(f"val/{get_task(cfg.task).metric}")
            if outcome != "failed":
                self.outcome.worker_overhead[event.run_id] = event.seconds - event.fit_seconds
        del self.in_flight[event.run_id]  # ended in the store
        self.outcome.counts[cfg.phase][outcome] += 1
        if cfg.phase == "tune":
            ok = outcome == "ok"
            loss = event.metrics.get("val/loss") if ok else None
            self._tuned(group, TuneResult(cfg.lr, cfg.seed, value if ok else None, loss))


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


# --------------------------------------------------------------------------- status


def grid_status(client: MlflowClient, spec: GridSpec | None, experiment: str) -> str:
    """Per phase: cells done / diverged / failed / running / pending, and the chosen rates.

    Read-only. With a spec, pending counts the cells the spec asks for that have no FINISHED
    run; with only an experiment name, what the runs themselves say.
    """
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise UserError(f"no experiment {experiment!r} in the tracking store")
    runs = grid_runs(client, exp.experiment_id, spec.name if spec else None)
    cells = [r for r in runs if "harness.cell_id" in r.data.tags]
    finished = finished_by_cell(cells)
    rows: dict[str, Counter] = defaultdict(Counter)
    for run in finished.values():
        phase = run.data.tags.get("harness.phase", "?")
        diverged = run.data.tags.get("harness.outcome") == "diverged"
        rows[phase]["diverged" if diverged else "done"] += 1
    for run in cells:
        cell = run.data.tags["harness.cell_id"]
        if cell not in finished and run.info.status in ("RUNNING", "FAILED", "KILLED"):
            rows[run.data.tags.get("harness.phase", "?")][_status_word(run.info.status)] += 1
            finished.setdefault(cell, run)  # count each unfinished cell once
    chosen = _chosen_rates(spec, finished, rows) if spec else _final_rates(cells)
    lines = [
        f"experiment {experiment!r}" + (f", grid {spec.name!r} ({spec.protocol})" if spec else "")
    ]
    columns = ("done", "diverged", "failed", "running", "pending")
    lines.append(f"{'phase':<6}" + "".join(f"{c:>10}" for c in columns))
    for phase in ("tune", "final"):
        if phase in rows or spec is not None:
            lines.append(f"{phase:<6}" + "".join(f"{rows[phase][c]:>10}" for c in columns))
    if chosen:
        lines.append("chosen learning rates:")
        lines.extend(f"  {label}: {lr:g}" for label, lr in chosen.items())
    return "\n".join(lines)


def _status_word(status: str) -> str:
    return {"RUNNING": "running", "FAILED": "failed", "KILLED": "failed"}[status]


def _chosen_rates(spec: GridSpec, finished: dict[str, Run], rows: dict[str, Counter]) -> dict:
    """Walk the protocol as the launcher would, counting what is still pending."""
    chosen: dict[str, float] = {}
    n_final = len(spec.seeds.final)
    for group in groups(spec):
        tune = tune_cells(spec, group)
        lr = group.fixed_lr
        if tune:
            done = [c for c in tune if _is_done(finished.get(c.cell_id))]
            rows["tune"]["pending"] += len(tune) - len(done)
            if len(done) < len(tune):
                rows["final"]["pending"] += n_final
                continue
            results = [tune_result(c, finished[c.cell_id]) for c in tune]
            lr = choose_lr(results, get_task(group.task).higher_is_better)
            chosen[group.label] = lr
        finals = final_cells(spec, group, lr)
        rows["final"]["pending"] += sum(not _is_done(finished.get(c.cell_id)) for c in finals)
    return chosen


def _is_done(run: Run | None) -> bool:
    return run is not None and run.info.status == "FINISHED"


def _final_rates(cells: list[Run]) -> dict[str, float]:
    """Without a spec: the rate the final runs of each task/attention/optimizer used."""
    rates: dict[str, float] = {}
    for run in cells:
        if run.data.tags.get("harness.phase") == "final":
            p = run.data.params
            rates[f"{p['task']}/{p['attention']}/{p['optimizer']}"] = float(p["lr"])
    return dict(sorted(rates.items()))
