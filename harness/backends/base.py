"""What every backend shares with the launcher: the `Pool` interface and the messages it carries.

The launcher hands a `Job` (one cell and the run created for it) to a pool and polls it for
events: the store writes a worker made (one dataclass per kind of write: `LogBatch`, which
carries a run's points, params and tags together as one `log_batch` call, `LogArtifact`,
`LogInputs` (the run's datasets), `Terminate`; and the single-kind `LogMetrics`, `LogParams`,
`LogTags`), a `Steps` now and then while a cell trains (how far it has come, for the progress
bar: not a write), a `Done` when a cell has ended, a `Lost` when a worker died with its cell.
A write knows how to apply itself to an `MlflowClient`, so the launcher, the one writer of a
local store, applies them in the order they came.

Light on purpose (MLflow is imported only when a write is applied): the command line reads
the backends' options from their modules before any heavy import.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Job:
    cfg: dict[str, Any]  # RunConfig.to_dict()
    run_id: str


@dataclass(frozen=True)
class Done:
    run_id: str
    outcome: str  # ok | diverged | failed
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0  # the whole cell in the worker
    fit_seconds: float = 0.0  # its training steps


@dataclass(frozen=True)
class Lost:
    run_id: str
    reason: str


@dataclass(frozen=True)
class Steps:
    """How far a running cell has come: `steps` trained in `seconds` of its training. A worker
    sends one after the first step, then at most one every few seconds, and one when training
    ends (harness.progress.StepReports); every backend carries them, whatever the store."""

    run_id: str
    steps: int
    seconds: float


# --------------------------------------------------------------------------- store writes


@dataclass(frozen=True)
class LogBatch:
    """One `log_batch` call: what a run buffered, sent whole. The launcher pays each call it
    applies in store transactions, so a worker sends one of these where three single-kind
    writes would cost three calls."""

    run_id: str
    points: list[tuple[str, float, int, int]]  # (key, value, timestamp ms, step)
    params: list[tuple[str, str]]
    tags: list[tuple[str, str]]

    def apply(self, client: Any) -> None:
        from mlflow.entities import Metric, Param, RunTag

        client.log_batch(
            self.run_id,
            metrics=[Metric(*p) for p in self.points],
            params=[Param(*p) for p in self.params],
            tags=[RunTag(*t) for t in self.tags],
        )


@dataclass(frozen=True)
class LogMetrics:
    run_id: str
    points: list[tuple[str, float, int, int]]  # (key, value, timestamp ms, step)

    def apply(self, client: Any) -> None:
        from mlflow.entities import Metric

        client.log_batch(self.run_id, metrics=[Metric(*p) for p in self.points])


@dataclass(frozen=True)
class LogParams:
    run_id: str
    params: list[tuple[str, str]]

    def apply(self, client: Any) -> None:
        from mlflow.entities import Param

        client.log_batch(self.run_id, params=[Param(*p) for p in self.params])


@dataclass(frozen=True)
class LogTags:
    run_id: str
    tags: list[tuple[str, str]]

    def apply(self, client: Any) -> None:
        from mlflow.entities import RunTag

        client.log_batch(self.run_id, tags=[RunTag(*t) for t in self.tags])


@dataclass(frozen=True)
class LogArtifact:
    """A file for the run's artifacts: its path under the run's root and its bytes."""

    run_id: str
    path: str
    data: bytes

    def apply(self, client: Any) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(self.path).name
            local.write_bytes(self.data)
            folder = str(Path(self.path).parent)
            client.log_artifact(self.run_id, str(local), None if folder == "." else folder)


@dataclass(frozen=True)
class LogInputs:
    """One `log_inputs` call: the run's MLflow datasets, each as (name, digest, source type,
    source, schema, profile) and its input tags (such as `mlflow.data.context`)."""

    run_id: str
    datasets: list[tuple[tuple[str, str, str, str, str | None, str | None], list[tuple[str, str]]]]

    def apply(self, client: Any) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = [
            DatasetInput(Dataset(*fields), [InputTag(*tag) for tag in tags])
            for fields, tags in self.datasets
        ]
        client.log_inputs(self.run_id, datasets=inputs)


@dataclass(frozen=True)
class Terminate:
    run_id: str
    status: str  # FINISHED | FAILED | KILLED

    def apply(self, client: Any) -> None:
        client.set_terminated(self.run_id, self.status)


Write = LogBatch | LogMetrics | LogParams | LogTags | LogArtifact | LogInputs | Terminate
Event = Write | Steps | Done | Lost  # what `Pool.poll` yields


# --------------------------------------------------------------------------- the pool


@runtime_checkable
class Pool(Protocol):
    """Workers that train cells: the launcher's whole view of a backend."""

    @property
    def idle(self) -> int:
        """How many more jobs `submit` takes now."""
        ...

    def submit(self, job: Job) -> None:
        """Start `job` on an idle worker."""
        ...

    def poll(self, timeout: float) -> Iterable[Event]:
        """What the workers sent within `timeout` seconds: every write a cell made comes
        before its `Done`."""
        ...

    def shutdown(self, kill: bool = False) -> list[Job]:
        """Stop every worker (at once with `kill`); returns the jobs that were still running."""
        ...
