"""Where a cell's fixed cost goes: milliseconds per phase, worker side and launcher side.

Runs quick-grid cells one after another in this process as a local worker runs them
(`run_job` into a `PipeSink` whose messages are kept in memory), then applies each cell's
writes to a temporary SQLite store as the launcher does, timing every write by kind. The
worker's phases are timed by wrapping the functions that do them (exclusive times: a phase
inside another is taken out of the outer one, so the phases add up). The first cell is a
warm-up (first calls build caches and load fonts) and is not counted; medians over the rest.

Worker phases: data (building or finding the task's data), model, trainer (constructing the
Lightning Trainer), test (`trainer.test` with the per-example outcomes), final validation
(when the last step is not a validation step), attention figure (maps, drawing, PNG), JSON
artifacts, finishing the run; `fit` (the training steps and validations among them) is shown
for scale but is not fixed cost. Launcher phases: creating the run with its params (as the
launcher's `_start` does) and applying each kind of write.

    .venv/bin/python benchmarks/cell_phases.py                 # 8 cells after the warm-up
    .venv/bin/python benchmarks/cell_phases.py --cells 16 --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from mlflow import MlflowClient

from harness import probe
from harness import train as train_module
from harness.backends import local
from harness.backends.base import Job
from harness.grid import final_cells, groups, tune_cells
from harness.spec import load_grid
from harness.tracking import MlflowRunLogger, experiment_id, run_tags
from tasks import TASKS

FIGURE_PARTS = ("figure: maps", "figure: drawing", "figure: PNG", "figure: rest")


class Phases:
    """Exclusive wall times per phase name, for the cell being run."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._inner: list[float] = []  # per open phase: seconds of the phases inside it

    def wrap(self, owner: Any, attribute: str, name: str) -> None:
        """Time `owner.attribute` as phase `name` (skipped where this version lacks it)."""
        function = getattr(owner, attribute, None)
        if function is not None:
            setattr(owner, attribute, self.timed(name, function))

    def timed(self, name: str, function: Callable) -> Callable:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._inner.append(0.0)
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                total = time.perf_counter() - started
                self.seconds[name] += total - self._inner.pop()
                if self._inner:
                    self._inner[-1] += total

        return timed


class Outbox:
    """A worker's pipe, kept in memory: what `PipeSink` sends."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    def send(self, message: Any) -> None:
        self.messages.append(message)


def instrument(phases: Phases) -> None:
    """Wrap the functions of each phase. Names of earlier versions are wrapped too (where
    they exist), so the same script measures a change before and after."""
    if hasattr(train_module, "build_data"):
        phases.wrap(train_module, "build_data", "data")
    else:  # before tasks.cache, each cell called its task's build
        for name, task in TASKS.items():
            TASKS[name] = dataclasses.replace(task, build=phases.timed("data", task.build))
    phases.wrap(train_module, "build_module", "model")
    phases.wrap(train_module, "_trainer", "trainer")
    phases.wrap(pl.Trainer, "fit", "fit (not fixed cost)")
    phases.wrap(pl.Trainer, "validate", "final validation")
    phases.wrap(pl.Trainer, "test", "test")
    phases.wrap(train_module, "log_attention_figure", "figure: rest")
    phases.wrap(probe, "attention_maps", "figure: maps")
    phases.wrap(probe, "attention_image", "figure: drawing")
    phases.wrap(probe, "attention_figure", "figure: drawing")  # matplotlib, earlier
    phases.wrap(local.PipeSink, "log_image", "figure: PNG")
    phases.wrap(local.PipeSink, "log_figure", "figure: PNG")  # matplotlib, earlier
    phases.wrap(local.PipeSink, "log_text", "JSON artifacts")
    phases.wrap(local.PipeSink, "log_dict", "JSON artifacts")
    phases.wrap(MlflowRunLogger, "finish", "finish")


def run_cell(cfg: Any, client: MlflowClient, exp_id: str, phases: Phases) -> dict[str, float]:
    """One cell: the launcher creates its run, the worker trains it, the launcher writes."""
    phases.seconds.clear()
    started = time.perf_counter()
    logger = MlflowRunLogger.create(client, exp_id, cfg.run_name, run_tags(cfg, "phases"))
    logger.log_params(cfg.flat_params())
    launcher = {"launcher: create run + params": time.perf_counter() - started}
    outbox = Outbox()
    done = local.run_job(local.PipeSink(outbox), Job(cfg.to_dict(), logger.run_id), "cpu")
    for message in outbox.messages:
        started = time.perf_counter()
        message.apply(client)
        key = f"launcher: apply {type(message).__name__}"
        launcher[key] = launcher.get(key, 0.0) + time.perf_counter() - started
    worker = dict(phases.seconds)
    worker["figure (all parts)"] = sum(worker.get(k, 0.0) for k in FIGURE_PARTS)
    counted = sum(v for k, v in phases.seconds.items() if not k.startswith("fit"))
    worker["worker: other"] = done.seconds - done.fit_seconds - counted
    worker["worker: fixed cost"] = done.seconds - done.fit_seconds
    launcher["launcher: all"] = sum(launcher.values())
    fixed = worker["worker: fixed cost"] + launcher["launcher: all"]
    return worker | launcher | {"fixed cost": fixed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="grids/quick.yaml")
    parser.add_argument("--cells", type=int, default=8, help="cells timed after the warm-up")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: as "
                        "each of 2 workers on 2 cores)")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_module.quiet_libraries()
    spec = load_grid(args.grid)
    cells = []
    for group in groups(spec):  # every group's tune cells and one final cell
        cells += tune_cells(spec, group) + final_cells(spec, group, group.lr_grid[0])[:1]
    phases = Phases()
    instrument(phases)
    folder = Path(tempfile.mkdtemp(prefix="cell-phases-"))
    os.chdir(folder)  # artifacts land in the temporary folder
    client = MlflowClient(f"sqlite:///{folder / 'phases.db'}")
    exp_id = experiment_id(client, "phases")
    run_cell(cells[0], client, exp_id, phases)  # warm-up
    rows = [run_cell(cfg, client, exp_id, phases) for cfg in cells[1 : 1 + args.cells]]
    print(f"median ms per phase over {len(rows)} cells ({args.threads} torch thread(s)):")
    for key in sorted({k for row in rows for k in row}):
        print(f"  {key:32s} {1000 * statistics.median(row.get(key, 0.0) for row in rows):8.1f}")


if __name__ == "__main__":
    main()
