"""The MLflow UI: its addresses, the view the harness records for a grid, and `harness ui`'s
server process.

Addresses are the routes of MLflow 3.17's web UI (a hash router, read from its JS bundle):
- `#/experiments/<id>/runs`: an experiment's runs table. `?workflowType=machine_learning`
  picks the UI's "Model training" side (its default is "GenAI", whose experiment page opens
  on traces), so the link lands on the training runs table whatever the browser last chose.
  `&viewStateShareKey=<key>` opens the view stored in the experiment tag
  `mlflow.sharedViewState.<key>` (JSON: search facets, columns, grouping).
- `#/experiments/<id>/runs/<run id>`: one run.
- `#/compare-runs?runs=[...]&experiments=[...]`: MLflow's comparison of runs (JSON lists).

Importing this module imports neither MLflow nor torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from harness import schema

WORKFLOW = "workflowType=machine_learning"
VIEW_KEY = "harness"  # the shared view the harness records: mlflow.sharedViewState.harness
VIEW_TAG = schema.SHARED_VIEW_PREFIX + VIEW_KEY


def runs_table_url(ui_url: str, experiment_id: str, view: bool = False) -> str:
    """The experiment's training runs table; with `view`, in the harness's view of a grid."""
    url = f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{WORKFLOW}"
    return url + (f"&viewStateShareKey={VIEW_KEY}" if view else "")


def run_url(ui_url: str, experiment_id: str, run_id: str) -> str:
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def compare_url(ui_url: str, experiment_id: str, run_ids: Sequence[str]) -> str:
    """MLflow's comparison page of `run_ids` (the lists URL-encoded, as JSON)."""
    runs = urllib.parse.quote(json.dumps(list(run_ids), separators=(",", ":")), safe="")
    experiments = urllib.parse.quote(json.dumps([experiment_id], separators=(",", ":")), safe="")
    return f"{ui_url.rstrip('/')}/#/compare-runs?runs={runs}&experiments={experiments}"


def experiment_address(client: Any, ui_url: str, experiment: str) -> str:
    """The runs table of `experiment` at `ui_url`, in the harness's view when a launch
    recorded one; a UserError when the store cannot be read or has no such experiment."""
    from harness import schema

    exp = schema.experiment_named(client, experiment, where=client.tracking_uri)
    return runs_table_url(ui_url, exp.experiment_id, view=VIEW_TAG in exp.tags)


def grid_view(metrics: Iterable[str], sweep_keys: Iterable[str]) -> str:
    """The runs-table view of a grid (the value of VIEW_TAG): its final runs, grouped by
    configuration (task, attention, optimizer, sweep point; a group's row averages its
    seeds), with the columns to compare: those params, lr and seed, and each task metric on
    the test and validation sets."""
    keys = [schema.TASK, schema.ATTENTION, schema.OPTIMIZER, *sweep_keys]
    columns = [f"params.`{key}`" for key in [*keys, schema.LR, schema.SEED]]
    for metric in dict.fromkeys(metrics):
        for split in (schema.test_metric, schema.val_metric):
            columns.append(f"metrics.`{split(metric)}`")
    group = [{"mode": "param", "groupByData": key} for key in keys]
    state = {
        "searchFilter": f"params.{schema.PHASE_PARAM} = 'final'",
        "selectedColumns": columns,
        "groupBy": {"aggregateFunction": "average", "groupByKeys": group},
    }
    return json.dumps(state)


# --------------------------------------------------------------------------- the server

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(Exception):
    """`harness ui` received a signal that stops it."""


def serve(command: Sequence[str], env: Mapping[str, str], on_ready: Any = None) -> int:
    """Run the server `command` until it ends or this process gets SIGINT (Ctrl-C), SIGTERM
    or SIGHUP (its terminal closed); then stop every process the server started. Returns the
    server's exit code, or 0 when a signal stopped it.

    SIGINT and SIGHUP stay ignored where they were (under `nohup`, in a background job of a
    script). The server runs in a session of its own, so a signal meant for it reaches only this
    process, which stops the server's whole process group (MLflow starts uvicorn and helpers
    as children): none is left behind, listening. `on_ready(server)` runs once it is started.
    """

    server: subprocess.Popen | None = None
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True
        if server is not None:  # before that, the check after Popen stops it
            raise Stopped(signum)

    # A signal ignored when this process started (`nohup`, a background job) stays ignored
    ignored = {s for s in STOP_SIGNALS if signal.getsignal(s) is signal.SIG_IGN}
    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS if s not in ignored}
    try:
        server = subprocess.Popen(list(command), env=dict(env), start_new_session=True)
        if stopping:
            raise Stopped
        if on_ready is not None:
            on_ready(server)
        return server.wait()
    except Stopped:
        return 0
    finally:
        for s in previous:  # a second signal must not cut the clean-up short
            signal.signal(s, signal.SIG_IGN)
        if server is not None:
            stop_group(server)
        for s, handler in previous.items():
            signal.signal(s, handler)


def stop_group(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM to the process group that `process` leads, SIGKILL to what is left of it after
    `timeout` seconds; returns once no process of the group is left (or, should one outlive
    SIGKILL as an unreaped zombie, 5 s later)."""
    group = process.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
        for signum, wait in ((signal.SIGKILL, timeout), (None, 5.0)):
            deadline = time.monotonic() + wait
            while _alive(group, process) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not _alive(group, process):
                break
            if signum is not None:
                os.killpg(group, signum)
    process.wait()


def _alive(group: int, process: subprocess.Popen) -> bool:
    """Whether a process of `group` is left (the leader, when it has ended, is reaped here)."""
    process.poll()
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True
