"""The local backend: long-lived worker processes on this machine, the launcher the one writer.

Each worker is spawned once and trains many cells, so importing torch, Lightning and MLflow
(about 4 s) is paid once per worker, not once per cell. Workers never open the MLflow store:
inside a worker a `PipeSink` stands in for `MlflowClient` and sends every call down the
worker's own pipe as a typed write (harness.backends.base); the launcher applies them in order.
The same pipe carries how far the worker's cell has come (`Steps`, every few seconds).
One writer means no "database is locked" on SQLite, and a worker that dies mid-message breaks
only its own pipe.

Torch threads per worker = cores // workers (at least 1), so workers do not oversubscribe
the cores (two OpenMP threads spinning against a busy core made runs many times slower).

With `cells_per_gpu` N (a backend option; harness.backends.check_cells_per_gpu checks it) and G
visible GPUs, the pool has N x G workers and worker i sees only GPU i % G: its
CUDA_VISIBLE_DEVICES is set before it touches CUDA, so each GPU trains N cells at once (small
models leave most of a GPU idle). Without GPUs (accelerator auto on a CPU machine) the option
changes nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import json
import multiprocessing as mp
import os
import signal
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

from harness.backends import check_cells_per_gpu
from harness.backends.base import (
    Done,
    Event,
    Job,
    LogArtifact,
    LogBatch,
    LogInputs,
    Lost,
    Steps,
    Terminate,
)

if TYPE_CHECKING:
    from mlflow.entities import DatasetInput, Metric, Param, RunTag

PR_SET_PDEATHSIG = 1  # linux/prctl.h
CUDA_DEVICES = "CUDA_VISIBLE_DEVICES"
PNG_COMPRESS_LEVEL = 1

OPTIONS: dict[str, dict[str, Any]] = {}  # command-line options of this backend: none


def check(tracking_uri: str, accelerator: str = "auto", cells_per_gpu: int | None = None) -> None:
    """Before anything is created: workers reach the store through the launcher, so only
    the option's value is checked (Lightning names a missing GPU itself, in the worker)."""
    check_cells_per_gpu(cells_per_gpu)


def workers_here(workers: int | None, cells_per_gpu: int | None = None) -> int:
    """Every worker runs on this machine."""
    return pool_size(workers, cells_per_gpu, len(visible_gpus()) if cells_per_gpu else 0)


def make_pool(
    workers: int | None, accelerator: str, tracking_uri: str, cells_per_gpu: int | None = None
) -> LocalPool:
    """`workers` processes (default: this machine's cores, or `cells_per_gpu` per GPU); the
    launcher writes the store."""
    check_cells_per_gpu(cells_per_gpu, accelerator)
    gpus = visible_gpus() if cells_per_gpu and accelerator != "cpu" else []
    size = pool_size(workers, cells_per_gpu, len(gpus))
    return LocalPool(size, accelerator, gpu_assignment(size, gpus))


def pool_size(workers: int | None, cells_per_gpu: int | None, gpus: int) -> int:
    """N cells per GPU on G GPUs: N x G workers; otherwise `workers`, or one per core."""
    if cells_per_gpu and gpus:
        return cells_per_gpu * gpus
    return workers or os.cpu_count() or 1


def gpu_assignment(workers: int, gpus: Sequence[str]) -> list[str | None]:
    """Each worker's CUDA_VISIBLE_DEVICES: worker i gets GPU i % G, so N x G workers put N on
    every GPU; None for every worker when there are no GPUs to share out."""
    return [gpus[i % len(gpus)] if gpus else None for i in range(workers)]


def visible_gpus(environ: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them: its own entries
    (indices or UUIDs) when it is set, else 0..count-1 as torch counts them (no CUDA context
    is made here, and workers are spawned, so they never inherit the launcher's CUDA)."""
    environ = os.environ if environ is None else environ
    if CUDA_DEVICES in environ:
        names = [name.strip() for name in environ[CUDA_DEVICES].split(",")]
        visible = []
        for name in names:
            if not name or name.startswith("-"):  # CUDA stops at an invalid entry ("-1")
                break
            visible.append(name)
        return visible
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


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
        """One message, applied as one `log_batch` call, whatever it holds."""
        self.conn.send(
            LogBatch(
                run_id,
                [(m.key, m.value, m.timestamp, m.step) for m in metrics],
                [(p.key, p.value) for p in params],
                [(t.key, t.value) for t in tags],
            )
        )

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.conn.send(LogArtifact(run_id, artifact_file, text.encode()))

    def log_dict(self, run_id: str, dictionary: dict, artifact_file: str) -> None:
        self.log_text(run_id, json.dumps(dictionary, indent=2), artifact_file)

    def log_image(self, run_id: str, image: Any, artifact_file: str) -> None:
        """A PIL image as PNG, compressed lightly: zlib level 1 wrote attention figures
        1.3-1.6x faster than the default 6 here, for files 15-30% larger."""
        buffer = io.BytesIO()
        image.save(buffer, format="png", compress_level=PNG_COMPRESS_LEVEL)
        self.conn.send(LogArtifact(run_id, artifact_file, buffer.getvalue()))

    def log_inputs(self, run_id: str, datasets: Sequence[DatasetInput] = ()) -> None:
        """The run's datasets, as one message."""
        entries = []
        for item in datasets:
            d = item.dataset
            fields = (d.name, d.digest, d.source_type, d.source, d.schema, d.profile)
            entries.append((fields, [(tag.key, tag.value) for tag in item.tags]))
        self.conn.send(LogInputs(run_id, entries))

    def set_terminated(self, run_id: str, status: str) -> None:
        self.conn.send(Terminate(run_id, status))


def worker_main(conn: Connection, threads: int, accelerator: str, gpu: str | None = None) -> None:
    """Train the cells the launcher sends until it sends None; on GPU `gpu` alone if given."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the launcher's to handle
    _die_with_parent()
    if gpu is not None:  # read by CUDA when it starts, which is later: at the first cell
        os.environ[CUDA_DEVICES] = gpu
    import torch

    torch.set_num_threads(threads)
    sink = PipeSink(conn)
    while (job := conn.recv()) is not None:
        conn.send(run_job(sink, job, accelerator, send=conn.send))


def run_job(
    client: Any,
    job: Job,
    accelerator: str,
    node: str | None = None,
    send: Callable[[Steps], None] | None = None,
) -> Done:
    """Train one cell into its run through `client` (an MlflowClient or a sink), telling
    `send` how far it has come (`Steps`, every few seconds); every backend's workers call this.
    `node`: where it trains, as the run's harness.node tag says (default: this host's name)."""
    from harness.config import RunConfig
    from harness.tracking import MlflowRunLogger
    from harness.train import run_cell

    cfg = RunConfig(**job.cfg)

    def report(steps: int, seconds: float) -> None:
        send(Steps(job.run_id, steps, seconds))

    try:
        logger = MlflowRunLogger(client, job.run_id)
        result = run_cell(
            cfg, logger, accelerator=accelerator, node=node,
            report=None if send is None else report,
        )  # fmt: skip
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

    def __init__(
        self, workers: int, accelerator: str = "auto", gpus: Sequence[str | None] = ()
    ) -> None:
        """`gpus[i]`: the CUDA_VISIBLE_DEVICES of worker i (None or missing: unchanged)."""
        self.size, self.accelerator = workers, accelerator
        self.threads = max(1, (os.cpu_count() or 1) // workers)
        self.gpus = [gpus[i] if i < len(gpus) else None for i in range(workers)]
        self._ctx = mp.get_context("spawn")
        self._workers = [self._start(i) for i in range(workers)]

    def _start(self, index: int) -> _Worker:
        """Worker `index`, on its GPU (a replacement gets the GPU of the one it replaces)."""
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=worker_main,
            args=(child, self.threads, self.accelerator, self.gpus[index]),
            daemon=True,
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
            self._workers[index] = self._start(index)
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
