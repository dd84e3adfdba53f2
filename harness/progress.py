"""Rich progress display for long work: one bar, nothing printed per step."""

from __future__ import annotations

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
