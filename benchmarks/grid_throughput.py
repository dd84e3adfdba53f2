"""Cells per minute of a grid at 1 and at 2 workers, with the fixed cost per cell, how busy the
cores were and what share of the workers' time went to training.

Runs the grid (default: grids/quick.yaml; `--tasks` keeps a subset) through the real launcher
and local backend into a fresh temporary SQLite store per worker count, one after the other
in this run, so the figures come from the same machine at the same time. Per worker count:

- cells/min: cells run / wall seconds of the launch (from starting the workers to the last
  cell recorded) x 60.
- fixed cost per cell: the launcher's own figure (GridOutcome.fixed_cost_per_cell), median over
  the cells: the worker's seconds on the cell that are not `trainer.fit` (data, model,
  trainer, final evaluation, artifacts, attention figure) plus the launcher's seconds creating
  the cell's run and applying the writes its worker sent. The medians of the two parts follow
  in brackets.
- cores busy: CPU seconds of the launcher (this process) and of its workers (reaped children)
  / wall seconds, out of this machine's cores. One worker already keeps both cores of a
  2-core machine partly busy through its two torch threads, so a second worker adds at most
  what the first left idle: read this line, not a ratio of wall times, for what a second
  worker bought.
- training share: the sum over cells of their `trainer.fit` seconds / (wall seconds x
  workers): the fraction of the workers' available time spent in training steps (and the
  validations among them). The rest is fixed cost, workers waiting for the launcher, and
  starting the workers (imports, about 4 s each).

    .venv/bin/python benchmarks/grid_throughput.py                 # the quick grid, 44 cells
    .venv/bin/python benchmarks/grid_throughput.py --tasks sort    # a subset of its tasks
    .venv/bin/python benchmarks/grid_throughput.py --workers 2     # one worker count
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from rich.console import Console

import harness.launch
from harness.backends.base import Done, Event, Job, Pool
from harness.launch import Launcher
from harness.spec import grid_from_dict, load_grid
from harness.train import quiet_libraries


class RecordingPool:
    """The backend's pool, passed through, noting each finished cell's `trainer.fit` seconds
    (the launcher keeps only what it needs for the fixed cost)."""

    def __init__(self, pool: Pool, fit_seconds: dict[str, float]) -> None:
        self.pool, self.fit_seconds = pool, fit_seconds

    @property
    def idle(self) -> int:
        return self.pool.idle

    def submit(self, job: Job) -> None:
        self.pool.submit(job)

    def poll(self, timeout: float) -> Iterable[Event]:
        for event in self.pool.poll(timeout):
            if isinstance(event, Done) and event.outcome != "failed":
                self.fit_seconds[event.run_id] = event.fit_seconds
            yield event

    def shutdown(self, kill: bool = False) -> list[Job]:
        return self.pool.shutdown(kill)


def recording(make_pool: Callable[..., Pool], fit_seconds: dict[str, float]) -> Callable:
    def make(*args: Any, **kwargs: Any) -> Pool:
        return RecordingPool(make_pool(*args, **kwargs), fit_seconds)

    return make


@dataclass
class Measured:
    seconds: float
    cells: int
    fixed: float  # median fixed cost per cell
    worker_part: float  # median of its worker part
    launcher_part: float  # median of its launcher part
    launcher_cpu: float
    workers_cpu: float
    fit: float | None  # sum of trainer.fit seconds over the cells (None: not recorded)


def run(spec: Any, workers: int, folder: Path) -> Measured:
    """The whole grid at `workers`, into a fresh store."""
    client = MlflowClient(f"sqlite:///{folder / f'workers{workers}.db'}")
    launcher = Launcher(spec, client, spec.name, workers, "cpu", Console(stderr=True), False)
    launcher.prepare()
    fit_seconds: dict[str, float] = {}
    make_pool = harness.launch.make_pool
    harness.launch.make_pool = recording(make_pool, fit_seconds)
    before = cpu_seconds(resource.RUSAGE_SELF), cpu_seconds(resource.RUSAGE_CHILDREN)
    try:
        outcome = launcher.run()  # joins its workers: their CPU time is in RUSAGE_CHILDREN
    finally:
        harness.launch.make_pool = make_pool
    own = cpu_seconds(resource.RUSAGE_SELF) - before[0]
    children = cpu_seconds(resource.RUSAGE_CHILDREN) - before[1]
    cells = sum(sum(c.values()) for c in outcome.counts.values())
    return Measured(
        seconds=outcome.seconds,
        cells=cells,
        fixed=outcome.fixed_cost_per_cell or float("nan"),
        worker_part=_median(outcome.worker_overhead.values()),
        launcher_part=_median(outcome.launcher_seconds[r] for r in outcome.worker_overhead),
        launcher_cpu=own,
        workers_cpu=children,
        fit=sum(fit_seconds.values()) if fit_seconds else None,  # None: make_pool not seen
    )


def _share(m: Measured, workers: int) -> str:
    if m.fit is None:
        return "n/a"
    share = m.fit / (m.seconds * workers)
    return f"{share:.2f} ({m.fit:.1f} s of fit / {m.seconds:.1f} s x {workers})"


def _median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="grids/quick.yaml")
    parser.add_argument("--tasks", nargs="+", help="keep only these tasks of the grid")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    spec = load_grid(args.grid)
    if args.tasks:
        data = spec.model_dump(mode="json")
        data["tasks"] = [t for t in data["tasks"] if t["name"] in args.tasks]
        spec = grid_from_dict(data, args.grid)
    quiet_libraries()
    folder = Path(tempfile.mkdtemp(prefix="grid-throughput-"))
    here = Path.cwd()
    os.chdir(folder)  # the stores' artifacts (./mlruns) land in the temporary folder
    cores = os.cpu_count() or 1
    try:
        for workers in args.workers:
            m = run(spec, workers, folder)
            busy = (m.launcher_cpu + m.workers_cpu) / m.seconds
            print(f"{workers} worker(s): {m.cells} cells in {m.seconds:6.1f} s = "
                  f"{60 * m.cells / m.seconds:5.1f} cells/min; fixed cost per cell "
                  f"{m.fixed:.3f} s (worker {m.worker_part:.3f}, launcher {m.launcher_part:.3f}); "
                  f"cores busy {busy:.2f} of {cores} (CPU s: launcher {m.launcher_cpu:.1f}, "
                  f"workers {m.workers_cpu:.1f}); training share {_share(m, workers)}",
                  flush=True)  # fmt: skip
    finally:
        os.chdir(here)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
