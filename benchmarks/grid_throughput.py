"""Cells per minute of a grid at 1 and at 2 workers, the speed-up, and the fixed cost per cell.

Runs the grid (default: grids/quick.yaml; `--tasks` keeps a subset) through the real launcher
and local backend into a fresh temporary SQLite store per worker count, one after the other
in this run, so both figures come from the same machine at the same time. The fixed cost per
cell is the launcher's own figure: everything a cell costs but its training steps (data,
model, trainer, final evaluation, attention figure, creating and writing its run), median
over the cells. It also prints how busy the cores were: the CPU seconds of the launcher
(this process) and of its workers (reaped children) against wall time x cores. One worker
already keeps both cores partly busy through its two torch threads, so the speed-up of two
workers is bounded by how idle the cores were with one. Ratios are printed last.

    .venv/bin/python benchmarks/grid_throughput.py                 # the quick grid, 44 cells
    .venv/bin/python benchmarks/grid_throughput.py --tasks sort    # a subset of its tasks
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
from pathlib import Path

from mlflow import MlflowClient
from rich.console import Console

from harness.launch import Launcher
from harness.spec import grid_from_dict, load_grid
from harness.train import quiet_libraries


def run(spec, workers: int, folder: Path) -> tuple[float, int, float, float, float]:
    """(seconds, cells run, median fixed cost per cell, launcher CPU seconds, workers' CPU
    seconds) of the whole grid at `workers`."""
    client = MlflowClient(f"sqlite:///{folder / f'workers{workers}.db'}")
    launcher = Launcher(spec, client, spec.name, workers, "cpu", Console(stderr=True), False)
    launcher.prepare()
    before = cpu_seconds(resource.RUSAGE_SELF), cpu_seconds(resource.RUSAGE_CHILDREN)
    outcome = launcher.run()  # joins its workers: their CPU time is in RUSAGE_CHILDREN
    own = cpu_seconds(resource.RUSAGE_SELF) - before[0]
    children = cpu_seconds(resource.RUSAGE_CHILDREN) - before[1]
    cells = sum(sum(c.values()) for c in outcome.counts.values())
    return outcome.seconds, cells, outcome.fixed_cost_per_cell or float("nan"), own, children


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
    try:
        results = {}
        for workers in args.workers:
            seconds, cells, fixed, own, children = run(spec, workers, folder)
            results[workers] = seconds, cells
            busy = (own + children) / seconds
            print(f"{workers} worker(s): {cells} cells in {seconds:6.1f} s = "
                  f"{60 * cells / seconds:5.1f} cells/min; fixed cost per cell {fixed:.2f} s; "
                  f"cores busy {busy:.2f} of {os.cpu_count()} (CPU s: launcher {own:.1f}, "
                  f"workers {children:.1f})", flush=True)  # fmt: skip
    finally:
        os.chdir(here)
        shutil.rmtree(folder, ignore_errors=True)
    base_seconds, _ = results[args.workers[0]]
    for workers in args.workers[1:]:
        speedup = base_seconds / results[workers][0]
        print(f"speed-up {workers} vs {args.workers[0]} worker(s): {speedup:.2f}x "
              f"(target 1.6x on 2 cores: {'met' if speedup >= 1.6 else 'NOT met'})")  # fmt: skip


if __name__ == "__main__":
    main()
