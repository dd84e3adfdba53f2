"""The local backend: long-lived worker processes on this machine, the launcher the one writer.

Each worker is spawned once and trains many cells, so importing torch, Lightning and MLflow
(about 4 s) is paid once per worker, not once per cell. Workers never open the MLflow store:
inside a worker a `PipeSink` stands in for `MlflowClient` and sends every call down the
worker's own pipe as a typed write (harness.backends.base); the launcher applies them in order.
One writer means no "database is locked" on SQLite, and a worker that dies mid-message breaks
only its own pipe.

Torch threads per worker = cores // workers (at least 1), so workers do not oversubscribe
the cores (two OpenMP threads spinning against a busy core made runs many times slower).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import json
import multiprocessing as mp
import os
import signal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from harness.backends.base import (
    Done,
    Event,
    Job,
    LogArtifact,
    LogMetrics,
    LogParams,
    LogTags,
    Lost,
    Terminate,
)

if TYPE_CHECKING:
    from mlflow.entities import Metric, Param, RunTag

PR_SET_PDEATHSIG = 1  # linux/prctl.h

OPTIONS: dict[str, dict[str, Any]] = {}  # command-line options of this backend: none


def check(tracking_uri: str) -> None:
    """Before anything is created: nothing to check (workers reach the store through the
    launcher)."""


def workers_here(workers: int | None) -> int:
    """Every worker runs on this machine."""
    return workers or os.cpu_count() or 1


def make_pool(workers: int | None, accelerator: str, tracking_uri: str) -> LocalPool:
    """`workers` processes (default: this machine's cores); the launcher writes the store."""
    return LocalPool(workers or os.cpu_count() or 1, accelerator)


# --------------------------------------------------------------------------- worker side


class PipeSink:
    """The MlflowClient calls a run makes, sent to the launcher instead of to the store."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def log_batch(
        self,
        run_id: str,
        metrics: Sequence[Metric] = (),
        params: Sequence[Param] = (),
        tags: Sequence[RunTag] = (),
    ) -> None:
        if metrics:
            points = [(m.key, m.value, m.timestamp, m.step) for m in metrics]
            self.conn.send(LogMetrics(run_id, points))
        if params:
            self.conn.send(LogParams(run_id, [(p.key, p.value) for p in params]))
        if tags:
            self.conn.send(LogTags(run_id, [(t.key, t.value) for t in tags]))

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.conn.send(LogArtifact(run_id, artifact_file, text.encode()))

    def log_dict(self, run_id: str, dictionary: dict, artifact_file: str) -> None:
        self.log_text(run_id, json.dumps(dictionary, indent=2), artifact_file)

    def log_figure(self, run_id: str, figure: Any, artifact_file: str) -> None:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        self.conn.send(LogArtifact(run_id, artifact_file, buffer.getvalue()))

    def set_terminated(self, run_id: str, status: str) -> None:
        self.conn.send(Terminate(run_id, status))


def worker_main(conn: Connection, threads: int, accelerator: str) -> None:
    """Train the cells the launcher sends until it sends None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the launcher's to handle
    _die_with_parent()
    import torch

    torch.set_num_threads(threads)
    sink = PipeSink(conn)
    while (job := conn.recv()) is not None:
        conn.send(run_job(sink, job, accelerator))


def run_job(client: Any, job: Job, accelerator: str) -> Done:
    """Train one cell into its run through `client` (an MlflowClient or a sink); every
    backend's workers call this."""
    from harness.config import RunConfig
    from harness.tracking import MlflowRunLogger
    from harness.train import run_cell

    cfg = RunConfig(**job.cfg)
    try:
        result = run_cell(cfg, MlflowRunLogger(client, job.run_id), accelerator=accelerator)
    except Exception:  # run_cell has recorded the error in the run, which is FAILED
        return Done(job.run_id, "failed")
    return Done(job.run_id, result.outcome, result.metrics, result.seconds, result.fit_seconds)


def _die_with_parent() -> None:
    """On Linux, ask the kernel to kill this worker when the launcher dies (even by SIGKILL),
    so no orphan goes on training a cell nobody will record."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # elsewhere the worker ends at its next message: the pipe is closed


# --------------------------------------------------------------------------- launcher side


@dataclass
class _Worker:
    process: mp.process.BaseProcess
    conn: Connection
    job: Job | None = None


class LocalPool:
    """N spawned workers; `submit` hands a job to an idle one, `poll` collects what they sent."""

    def __init__(self, workers: int, accelerator: str = "auto") -> None:
        self.size, self.accelerator = workers, accelerator
        self.threads = max(1, (os.cpu_count() or 1) // workers)
        self._ctx = mp.get_context("spawn")
        self._workers = [self._start() for _ in range(workers)]

    def _start(self) -> _Worker:
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=worker_main, args=(child, self.threads, self.accelerator), daemon=True
        )
        process.start()
        child.close()
        return _Worker(process, parent)

    @property
    def idle(self) -> int:
        return sum(w.job is None for w in self._workers)

    def submit(self, job: Job) -> None:
        index = next(i for i, w in enumerate(self._workers) if w.job is None)
        try:
            self._workers[index].conn.send(job)
        except OSError:  # it died (while idle, or with its last job): start another in its place
            self._workers[index].process.join(timeout=5)
            self._workers[index] = self._start()
            self._workers[index].conn.send(job)
        self._workers[index].job = job

    def poll(self, timeout: float) -> Iterable[Event]:
        """Writes to apply, finished jobs, and jobs lost with a worker."""
        ready = wait([w.conn for w in self._workers if w.job is not None], timeout)
        for worker in [w for w in self._workers if w.conn in ready]:
            yield from self._drain(worker)

    def _drain(self, worker: _Worker) -> Iterable[Event]:
        while worker.job is not None:
            try:
                if not worker.conn.poll():
                    return
                message = worker.conn.recv()
            except (EOFError, OSError):
                yield self._replace(worker)
                return
            if isinstance(message, Done):
                worker.job = None
            yield message

    def _replace(self, worker: _Worker) -> Lost:
        """The worker died (killed, out of memory): report its job lost. Its slot is idle;
        `submit` starts a new worker there when there is a job for it."""
        job, worker.job = worker.job, None
        worker.process.join(timeout=5)
        worker.conn.close()
        return Lost(job.run_id, f"worker process died (exit code {worker.process.exitcode})")

    def shutdown(self, kill: bool = False) -> list[Job]:
        """Stop every worker; returns the jobs that were still running."""
        running = [w.job for w in self._workers if w.job is not None]
        for w in self._workers:
            if kill or w.job is not None:
                w.process.kill()
            else:
                try:
                    w.conn.send(None)
                except OSError:
                    w.process.kill()
        for w in self._workers:
            w.process.join(timeout=10)
            w.conn.close()
        return running
