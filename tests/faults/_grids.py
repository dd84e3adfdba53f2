"""What the process-fault tests share: tiny grids, a launcher in its own process, its worker
processes, and the checks of what a store holds after a fault.

Tiny cells: a 4-symbol copy, a 16-wide one-layer model, a few seconds each on 2 cores.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.entities import Run

from harness.cli import main

BASE = {
    "protocol": "fixed",
    "tasks": [{"name": "copy", "params": {"length": 4, "n_train": 512}}],
    "model": {"d_model": 16, "d_ff": 32, "d_k": 8, "n_layers": 1},
    "train": {"batch_size": 32},
    "budget": {"steps": 40, "val_every": 20},
}


def write_grid(folder: Path, name: str, **fields: Any) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **BASE, **fields}))
    return path


def run_grid(path: Path, uri: str, *extra: str) -> int:
    """`harness run` in this process."""
    return main(["run", str(path), "--tracking-uri", uri, "--no-progress", *extra])


@contextlib.contextmanager
def launched(
    path: Path,
    uri: str,
    *extra: str,
    stderr: Path,
    env: dict[str, str] | None = None,
    session: bool = False,
) -> Iterator[subprocess.Popen]:
    """`harness run` in its own process (to be killed), stderr into a file; with `session`,
    in a process group of its own, killed with everything it started. Killed on the way out
    if it still runs (a failed test leaves no launcher training behind)."""
    command = [sys.executable, "-m", "harness", "run", str(path), "--tracking-uri", uri,
               "--no-progress", *extra]  # fmt: skip
    with stderr.open("w") as err:
        process = subprocess.Popen(
            command, cwd=path.parent, stdout=subprocess.DEVNULL, stderr=err,
            env=os.environ | (env or {}), start_new_session=session,
        )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            if session:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
            process.wait()


def wait_for(
    condition: Callable[[], bool],
    what: str,
    process: subprocess.Popen | None = None,
    timeout: float = 240,
) -> None:
    """Poll `condition` until it holds; fail if `process` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the launcher ended (exit {process.returncode}) before {what}")
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout} s")


def cells(client: MlflowClient, experiment: str) -> list[Run]:
    """The experiment's cell runs (not the grid's parent); none when it does not exist yet."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if "harness.cell_id" in r.data.tags]


def statuses(client: MlflowClient, experiment: str) -> list[str]:
    return [r.info.status for r in cells(client, experiment)]


def mid_grid(client: MlflowClient, experiment: str) -> Callable[[], bool]:
    """For `wait_for`: some cells FINISHED while others are RUNNING."""

    def finished_and_running() -> bool:
        now = statuses(client, experiment)
        return "FINISHED" in now and "RUNNING" in now

    return finished_and_running


def worker_pids(launcher_pid: int) -> list[int]:
    """The launcher's worker processes: its children started by multiprocessing's spawn
    (not its resource tracker)."""
    pids = []
    for task in Path(f"/proc/{launcher_pid}/task").glob("*"):
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return [p for p in pids if "spawn_main" in _cmdline(p)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def snapshot(client: MlflowClient, runs: list[Run]) -> dict[str, Any]:
    """What must survive a fault untouched: per FINISHED run, its end time and every point
    of every metric."""
    return {
        run.info.run_id: (run.info.end_time, _histories(client, run))
        for run in runs
        if run.info.status == "FINISHED"
    }


def assert_untouched(client: MlflowClient, kept: dict[str, Any]) -> None:
    """The runs of a `snapshot` are still FINISHED, with the same end time and points."""
    for run_id, (end_time, histories) in kept.items():
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED", run.info.run_name
        assert run.info.end_time == end_time, run.info.run_name
        assert _histories(client, run) == histories, run.info.run_name


def _histories(client: MlflowClient, run: Run) -> dict[str, list[tuple]]:
    return {key: _points(client, run, key) for key in run.data.metrics}


def _points(client: MlflowClient, run: Run, key: str) -> list[tuple]:
    """(step, timestamp, value) of every point, in step order; a doubled point shows twice."""
    history = client.get_metric_history(run.info.run_id, key)
    return sorted((m.step, m.timestamp, m.value) for m in history)


def steps_of(client: MlflowClient, run: Run, key: str) -> list[int]:
    return [point[0] for point in _points(client, run, key)]


def assert_complete(client: MlflowClient, experiment: str, n_cells: int) -> list[Run]:
    """Every cell has exactly one FINISHED run, each with every point once: `train/loss` and
    `grad_norm` at steps 1..steps, validation at every val_every, one test value."""
    runs = cells(client, experiment)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len({r.data.tags["harness.cell_id"] for r in runs}) == n_cells
    assert len(finished) == n_cells, "a cell without, or with more than one, FINISHED run"
    assert len({r.data.tags["harness.cell_id"] for r in finished}) == n_cells
    for run in finished:
        name = run.info.run_name
        steps, val_every = int(run.data.params["steps"]), int(run.data.params["train.val_every"])
        assert run.data.tags["harness.outcome"] == "ok", name
        assert steps_of(client, run, "train/loss") == list(range(1, steps + 1)), name
        assert steps_of(client, run, "grad_norm") == list(range(1, steps + 1)), name
        assert steps_of(client, run, "val/acc") == list(range(val_every, steps + 1, val_every))
        assert steps_of(client, run, "test/acc") == [steps], name
    return finished
