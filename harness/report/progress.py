"""A Rich progress display for the report's stages (reading MLflow, figures, the PDF)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class RichProgress:
    """One bar per stage on stderr; silent when disabled (tests, --no-progress)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar = Progress(
            TextColumn("{task.description:<18}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=not enabled,
        )

    def __enter__(self) -> RichProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    @contextmanager
    def stage(self, name: str, total: int | None = None) -> Iterator[Callable[..., None]]:
        task = self.bar.add_task(name, total=total)

        def step(done: int = 1, of: int | None = None) -> None:
            if of is None:
                self.bar.advance(task, done)
            else:
                self.bar.update(task, completed=done, total=of)

        yield step
        total = self.bar.tasks[task].total or 1
        self.bar.update(task, completed=total, total=total)  # a stage ends full
