"""Rich progress display for long work: one bar, nothing printed per step."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from harness.tracking import StepMetrics


class StepProgress(pl.Callback):
    """A step bar for one training run, on stderr, showing the last recorded loss."""

    def __init__(self, label: str, total_steps: int, steps: StepMetrics) -> None:
        self.steps = steps
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.task_id = self.progress.add_task(label, total=total_steps, loss="-")

    def on_train_start(self, *args: Any) -> None:
        self.progress.start()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        loss = self.steps.last_loss
        self.progress.update(
            self.task_id,
            completed=trainer.global_step,
            loss="-" if loss is None else f"{loss:.4f}",
        )

    def on_train_end(self, *args: Any) -> None:
        self.progress.stop()

    def on_exception(self, *args: Any) -> None:
        self.progress.stop()


class GridProgress:
    """One bar for a grid: cells done / total, running, failed, diverged, elapsed, ETA."""

    def __init__(self, label: str, total: int, console: Console, enabled: bool = True) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
        )
        self.task_id = self.progress.add_task(label, total=total, status="")

    def __enter__(self) -> GridProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def update(self, counts: Mapping[str, Counter], running: int) -> None:
        """`counts`: phase -> outcome -> cells (`stale` runs are not cells of this launch)."""
        done = sum(n for c in counts.values() for k, n in c.items() if k != "stale")
        failed = sum(c["failed"] + c["killed"] for c in counts.values())
        diverged = sum(c["diverged"] for c in counts.values())
        status = f"running {running}  failed {failed}  diverged {diverged}"
        self.progress.update(self.task_id, completed=done, status=status)
