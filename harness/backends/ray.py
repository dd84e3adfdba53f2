"""The Ray backend: cells on long-lived Ray actors, on this machine or on a Ray cluster.

The launcher is the same as for the local backend (same planning, resume and skip rules,
progress bar); only where a cell trains changes. Each actor is one worker: it imports torch,
Lightning and MLflow once and trains the cells it is given, one at a time (`run_job`, as a
local worker does). Ray Tune is not used: its MLflow callback sends one request per metric
key per report, and the protocol's tune-then-final scheduling is the launcher's already.

How metric points reach MLflow, in batches either way (`MlflowRunLogger` sends `log_batch`
calls of up to 1000 points):
- with a tracking server (`--tracking-uri http://...`), each actor writes its runs to the
  server itself, so a cluster of many machines does not funnel every point through the
  launcher;
- with a local store (SQLite) on a local Ray instance, actors send their calls through a
  Ray queue and the launcher writes them, one writer, as with the local backend. Actors on
  other machines cannot reach a local file: `check` refuses that combination.
Either way each actor says how far its cell has come (`Steps`, every few seconds) through a
Ray queue, the progress bar's one channel when actors write to a server; losing that queue
with its node stops those reports only.

Each actor is handed cells only once it has started (its `ready` call answered), so a cell
never waits behind an actor that Ray cannot place. An actor that dies with its cell (its
process or its whole node killed) loses only that cell (`Lost`: the launcher marks its run
KILLED) and is replaced by a new actor; where the cluster has no room left for it (a node
gone) the new one waits for a CPU and the remaining actors go on with the grid. An actor that
dies before it has started is not replaced. When no actor is left, or none has started for
`PLACEMENT_WAIT` seconds with none training, the grid stops with one line (`NoWorkers`, exit
2) rather than wait for ever; the same command resumes it.

Its one option, `--ray-address`, is declared here (`OPTIONS`) and reaches `make_pool` as
`ray_address`; the command line and the launcher only pass it along. The shared option
`cells_per_gpu` N makes each actor ask for 1/N of a GPU (`actor_gpus`), so Ray places N
actors on each GPU. An actor that asks for a GPU no node has is never placed, so `check`
refuses `--accelerator gpu` where Ray has no GPU to give, before anything is created.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from harness.backends import check_cells_per_gpu
from harness.backends.base import Done, Event, Job, Lost, Steps, Write
from harness.backends.local import PipeSink, run_job
from harness.errors import UserError
from harness.retry import tracking_deadline
from harness.store import is_http

LOCAL = (None, "", "local")  # --ray-address values that mean "start Ray on this machine"
GPU_ACCELERATORS = ("gpu", "cuda")  # --accelerator values that make each actor ask for a GPU
QUEUE_BATCH = 1000  # queue items taken per poll
# Seconds the pool waits for an actor to start while none has: a node's first actor imports
# torch, Lightning and MLflow (seconds; a minute or more from a cold network file system).
PLACEMENT_WAIT = 300.0
_INIT: dict[str, Any] = {  # how the launcher starts or joins Ray: quiet, no dashboard
    "include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING,
    "configure_logging": True,
}  # fmt: skip

OPTIONS: dict[str, dict[str, Any]] = {  # command-line options of this backend
    "--ray-address": {
        "help": "a running Ray cluster (e.g. auto, HOST:6379, ray://HOST:10001); default: "
        "start Ray on this machine",
    },
}


def workers_here(
    workers: int | None, ray_address: str | None = None, cells_per_gpu: int | None = None
) -> int | None:
    """Without --ray-address, Ray starts here with `workers` CPUs (default: the cores)."""
    return (workers or os.cpu_count() or 1) if ray_address in LOCAL else None


def make_pool(
    workers: int | None,
    accelerator: str,
    tracking_uri: str,
    ray_address: str | None = None,
    cells_per_gpu: int | None = None,
) -> RayPool:
    """`workers` actors (default: this machine's cores, or the cluster's CPUs; with
    `cells_per_gpu` N on GPUs, N per GPU of the cluster), each asking for 1/N of a GPU."""
    check_cells_per_gpu(cells_per_gpu, accelerator)
    return RayPool(workers, accelerator, ray_address, tracking_uri, cells_per_gpu)


def check(
    tracking_uri: str,
    accelerator: str = "auto",
    ray_address: str | None = None,
    cells_per_gpu: int | None = None,
) -> None:
    """Before anything is created: Ray is installed, remote workers can reach the store, and
    a GPU run has GPUs to ask for (an actor that asks Ray for a GPU the cluster lacks waits
    for ever)."""
    check_cells_per_gpu(cells_per_gpu)
    try:
        import ray
    except ImportError:
        raise UserError(
            "--backend ray: Ray is not installed (pip install 'attention-harness[ray]')"
        ) from None
    if ray_address not in LOCAL and not is_http(tracking_uri):
        raise UserError(
            f"--ray-address {ray_address} with tracking URI {tracking_uri}: workers on other "
            "machines cannot write to a local store; start an MLflow tracking server and pass "
            "--tracking-uri http://HOST:PORT (README: Scaling out)"
        )
    if accelerator in GPU_ACCELERATORS and _gpus(ray, ray_address) == 0:
        where = "this machine" if ray_address in LOCAL else f"the Ray cluster at {ray_address}"
        raise UserError(
            f"--accelerator {accelerator}: {where} has no GPU for Ray to give the workers "
            "(use --accelerator cpu, or a cluster with GPUs)"
        )


def _gpus(ray: Any, ray_address: str | None) -> float:
    """GPUs Ray can give actors: the cluster's (connected to for the question, then left as
    it was), or with Ray still to start on this machine, the GPUs CUDA sees here (what Ray
    finds when it starts)."""
    if ray.is_initialized():
        return ray.cluster_resources().get("GPU", 0)
    if ray_address in LOCAL:
        import torch

        return torch.cuda.device_count()
    try:
        ray.init(address=ray_address, **_INIT)
    except (ConnectionError, RuntimeError, ValueError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"--ray-address {ray_address}: cannot connect ({message})") from None
    try:
        return ray.cluster_resources().get("GPU", 0)
    finally:
        ray.shutdown()


class NoWorkers(UserError):
    """No Ray actor is left to train the grid's cells, or none could start in time."""


class _QueueConn:
    """What PipeSink needs of a connection (`send`), over a Ray queue."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def send(self, message: Write | Steps) -> None:
        self.queue.put(message)  # blocks until the queue holds it: ordered before "done"


class CellWorker:
    """One Ray actor: trains the cells it is given, one at a time."""

    def __init__(
        self, threads: int, accelerator: str, tracking_uri: str | None, queue: Any, deadline: float
    ) -> None:
        from harness.telemetry import off_unless_chosen

        off_unless_chosen()  # before MLflow is imported: a cluster's node has its own variables
        import torch
        from mlflow import MlflowClient

        from harness.retry import RetryingClient
        from harness.train import quiet_libraries

        torch.set_num_threads(threads)
        quiet_libraries()
        self.accelerator = accelerator
        self.node = ray_node()
        self.progress: _QueueConn | None = _QueueConn(queue)  # whatever the store
        if tracking_uri:  # a server that goes away: each call retried up to the deadline
            warn = logging.getLogger(__name__).warning
            self.client = RetryingClient(MlflowClient(tracking_uri), deadline, warn)
        else:
            self.client = PipeSink(_QueueConn(queue))

    def ready(self) -> bool:
        """Answers once the actor is placed on a node and has started."""
        return True

    def run(self, job: Job) -> Done:
        return run_job(self.client, job, self.accelerator, self.node, self.report)

    def report(self, steps: Steps) -> None:
        """How far a cell has come, on the queue. A queue lost with its node loses only that:
        cells train on, and the launcher counts each when it ends."""
        import ray

        if self.progress is None:
            return
        try:
            self.progress.send(steps)
        except ray.exceptions.RayError:
            self.progress = None


def ray_node() -> str:
    """This Ray worker's node as harness.node says: "<host name>/<node id, first 8 hex>"
    (two Ray nodes on one machine share the host name and may share the IP address)."""
    import ray

    return f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"


@dataclass
class _Slot:
    """One actor of the pool: `starting`, the future of its `ready` call until it answers;
    then `job` and its `future` while it trains a cell."""

    actor: Any
    starting: Any | None
    future: Any | None = None
    job: Job | None = None


class RayPool:
    """`workers` actors; the same interface as LocalPool (idle, submit, poll, shutdown)."""

    def __init__(
        self,
        workers: int | None,
        accelerator: str,
        address: str | None,
        tracking_uri: str,
        cells_per_gpu: int | None = None,
        placement_wait: float | None = None,  # default: PLACEMENT_WAIT
    ) -> None:
        import ray
        from ray.util.queue import Queue

        self.ray = ray
        self.started_ray = not ray.is_initialized()
        local = address in LOCAL  # Ray on this machine, not a cluster
        if self.started_ray:
            if local:
                _init_loopback(ray, num_cpus=workers or os.cpu_count(), **_INIT)
            else:
                ray.init(address=address, **_INIT)
        on_gpu = accelerator in GPU_ACCELERATORS or _auto_gpu(ray, accelerator)
        workers = workers or _default_actors(ray, cells_per_gpu if on_gpu else None)
        self.direct = direct = is_http(tracking_uri)  # actors write to the server themselves
        self.queue = Queue()  # every cell's `Steps`; with a local store, its writes too
        threads = max(1, (os.cpu_count() or 1) // workers) if local else 1
        gpus = actor_gpus(on_gpu, cells_per_gpu or 1)
        actor = ray.remote(num_cpus=1, num_gpus=gpus, max_restarts=0)(CellWorker)
        deadline = tracking_deadline()  # read here: actors on other nodes lack the variable
        self._new = lambda: actor.remote(
            threads, accelerator, tracking_uri if direct else None, self.queue, deadline
        )
        self.need = "1 CPU" + (f" and {gpus:g} GPU" if gpus else "")  # what one actor asks for
        self.placement_wait = PLACEMENT_WAIT if placement_wait is None else placement_wait
        self._slots = [self._start() for _ in range(workers)]
        self._none_started_since: float | None = None

    def _start(self) -> _Slot:
        """A new actor, handed no cell before its `ready` call answers."""
        actor = self._new()
        return _Slot(actor, actor.ready.remote())

    @property
    def idle(self) -> int:
        return sum(s.starting is None and s.job is None for s in self._slots)

    def submit(self, job: Job) -> None:
        slot = next(s for s in self._slots if s.starting is None and s.job is None)
        slot.future, slot.job = slot.actor.run.remote(job), job

    def poll(self, timeout: float) -> Iterable[Event]:
        """Started actors and finished cells are found first, then the queue is drained, then
        the cells are reported: every call a cell made is applied before its run is counted
        done."""
        waiting = {}  # future -> (its slot, whether it is the slot's `ready` call)
        for slot in self._slots:
            if slot.starting is not None:
                waiting[slot.starting] = (slot, True)
            elif slot.future is not None:
                waiting[slot.future] = (slot, False)
        ready: list = []
        if waiting:
            ready, _ = self.ray.wait(list(waiting), num_returns=len(waiting), timeout=timeout)
        yield from self._drain_queue()
        for future in ready:
            slot, starting = waiting[future]
            if starting:
                self._started(slot)
            else:
                yield self._ended(slot)
        self._check_started()

    def _started(self, slot: _Slot) -> None:
        """The actor answered its `ready` call, or died before it could (its node gone, or
        its start failed): then it is dropped, not replaced, so an actor that cannot start
        is not started again and again."""
        try:
            self.ray.get(slot.starting)
        except self.ray.exceptions.RayError as err:
            self._slots.remove(slot)
            if not self._slots:
                raise NoWorkers(f"no Ray worker left: the last one died as it started "
                                f"({_first_line(err)})") from None  # fmt: skip
            return
        slot.starting = None

    def _ended(self, slot: _Slot) -> Event:
        """The actor's cell ended: its `Done`, or `Lost` when the actor died with it. A dead
        actor is killed for good (one only out of reach must not go on writing the run) and
        a new one takes its place, which waits where the cluster has no room for it."""
        future, job = slot.future, slot.job
        assert job is not None
        slot.future = slot.job = None
        try:
            return self.ray.get(future)
        except self.ray.exceptions.RayActorError as err:
            self.ray.kill(slot.actor, no_restart=True)
            self._slots[self._slots.index(slot)] = self._start()
            return Lost(job.run_id, f"Ray actor died: {_first_line(err)}")
        except self.ray.exceptions.RayError as err:
            return Lost(job.run_id, f"Ray task failed: {_first_line(err)}")

    def _check_started(self) -> None:
        """Stop waiting once no actor has started for `placement_wait` seconds while none is
        training: the cluster lost the nodes it had, or has no room for one."""
        if any(s.starting is None for s in self._slots):
            self._none_started_since = None
            return
        now = time.monotonic()
        if self._none_started_since is None:
            self._none_started_since = now
        elif now - self._none_started_since > self.placement_wait:
            raise NoWorkers(
                f"no Ray worker could start in {self.placement_wait:g} s: the cluster has no "
                f"room for one ({self.need}); run the same command again when it has"
            )

    def _drain_queue(self) -> Iterable[Write | Steps]:
        try:
            while self.queue is not None and not self.queue.empty():
                yield from self.queue.get_nowait_batch(min(QUEUE_BATCH, self.queue.qsize()))
        except self.ray.exceptions.RayActorError:
            if not self.direct:  # it carried the runs' writes
                raise
            self.queue = None  # it carried only `Steps`: cells are counted when they end

    def shutdown(self, kill: bool = False) -> list[Job]:
        running = [s.job for s in self._slots if s.job is not None]
        for slot in self._slots:
            self.ray.kill(slot.actor)
        self._slots.clear()
        if self.started_ray:
            self.ray.shutdown()
        return running


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _init_loopback(ray: Any, **kwargs: Any) -> None:
    """Start Ray on this machine with every port it opens on 127.0.0.1.

    Ray's servers (GCS, raylet, object manager, workers) listen on all interfaces unless the
    node's IP is exactly 127.0.0.1, and on Linux `ray.init` turns `_node_ip_address="127.0.0.1"`
    back into the machine's network address. Its local-only mode (the default on macOS and
    Windows; `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` elsewhere) keeps 127.0.0.1. That variable
    is read once, when Ray is imported, into `ray_constants.ENABLE_RAY_CLUSTER`, so the constant
    is set here, for this call only (a later connection to a cluster is not affected).
    tests/faults/test_security.py reads the listening sockets of every Ray process.
    """
    from ray._private import ray_constants

    cluster = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(_node_ip_address="127.0.0.1", **kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster


def actor_gpus(on_gpu: bool, cells_per_gpu: int) -> float:
    """The GPU share each actor asks Ray for: 1/N with N cells per GPU (Ray packs N such
    actors on one GPU and sets their CUDA_VISIBLE_DEVICES), none on CPU."""
    return 1.0 / cells_per_gpu if on_gpu else 0


def _default_actors(ray: Any, cells_per_gpu: int | None) -> int:
    """One actor per CPU of the cluster, or N per GPU with `cells_per_gpu` N on GPUs."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if cells_per_gpu and gpus:
        return cells_per_gpu * gpus
    return max(1, int(resources.get("CPU", 1)))


def _auto_gpu(ray: Any, accelerator: str) -> bool:
    return accelerator == "auto" and ray.cluster_resources().get("GPU", 0) > 0
