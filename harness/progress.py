"""Rich progress display for long work: one bar, nothing printed per step.

A grid's bar (`GridProgress`) counts training steps across every worker, not cells: a cell of
a big grid takes minutes, and a bar that moves once per cell has no rate to show in between.
Workers say how far their cell has come (`StepReports`: a few numbers every few seconds, never
a message per step), the launcher passes each report to the bar, and the bar's rate is the
steps trained in this launch over the time since its training started, so its ETA holds
however long a cell takes (Rich's own ETA estimates speed from the last 30 s of updates).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import pytorch_lightning as pl
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressBar,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column
from rich.text import Text

from harness.tracking import StepMetrics

REPORT_EVERY = 2.0  # s between a worker's step reports (besides the first step and the end)
WARM_UP = 10.0  # s of training before the bar shows a rate and an ETA
MIN_BAR, MAX_BAR = 8, 40  # columns of the grid's bar


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


class StepReports(pl.Callback):
    """Tells `report(steps, seconds)` how far training has come: the steps trained and the
    seconds since training started. Once after the first step (when training started), then
    at most once every `every` seconds, and once when training ends, also when it stops early
    (a diverged run). The cost per step is one reading of the clock."""

    def __init__(self, report: Callable[[int, float], None], every: float = REPORT_EVERY) -> None:
        self.report, self.every = report, every
        self._started = 0.0
        self._next = -math.inf

    def on_train_start(self, *args: Any) -> None:
        self._started = time.monotonic()
        self._next = -math.inf

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.every
            self.report(trainer.global_step, now - self._started)

    def on_train_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.report(trainer.global_step, time.monotonic() - self._started)


class GridProgress:
    """One line for a grid: its training steps done of those planned, across every worker, with
    its cells beside them, e.g. `quick ━━━━ 12,340/48,000 steps · cells 7/44 · running 2 ·
    failed 0 · diverged 1 · 310 steps/s · 0:01:10 elapsed · ETA 0:01:55` (fewer fields on a
    narrow terminal: the elapsed time first, the steps and the ETA last).

    Steps done are those of cells skipped (a FINISHED run before this launch: `skipped`) and
    those trained in this launch (`trained` while a cell runs, `ended` when it ends). The rate
    counts only the latter, over the time since the first cell of this launch started
    training, and the ETA is the steps left over that rate. A cell that ends early (diverged,
    failed, lost) takes the rest of its planned steps off the total, and so do cells that will
    not run in this launch (`drop`: the later cells of a group whose tuning lost a cell), so
    the bar ends full. `get_time`: the clock (Rich's `Progress(get_time=...)`), for tests.
    """

    def __init__(
        self,
        label: str,
        cells: int,
        steps: int,
        console: Console,
        enabled: bool = True,
        get_time: Callable[[], float] | None = None,
    ) -> None:
        self.cells, self.planned = cells, steps
        self.skipped_steps = 0  # done before this launch: not in the rate
        self.ended_steps = 0  # trained in this launch by cells that have ended
        self.running_steps: dict[str, int] = {}  # run id -> steps trained so far
        self.dropped = 0  # planned steps that will not be trained in this launch
        self.training_since: float | None = None  # when this launch's first step began
        self.status = {"cells": 0, "running": 0, "failed": 0, "diverged": 0}
        self.progress = Progress(
            TextColumn("{task.description}"),
            _Bar(self),
            _Fields(self),
            console=console,
            disable=not enabled,
            get_time=get_time,
        )
        self.opened = self.progress.get_time()
        self.task_id = self.progress.add_task(label, total=steps)

    def __enter__(self) -> GridProgress:
        self.opened = self.progress.get_time()
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    # what the launcher tells it -----------------------------------------------------------
    def skipped(self, steps: int) -> None:
        """A cell that needs no training (FINISHED before): its steps are done already."""
        self.skipped_steps += steps
        self._refresh()

    def trained(self, run_id: str, steps: int, seconds: float) -> None:
        """A running cell's report: `steps` trained in its first `seconds` of training."""
        now = self.progress.get_time()
        if self.training_since is None or now - seconds < self.training_since:
            self.training_since = now - seconds
        self.running_steps[run_id] = max(steps, self.running_steps.get(run_id, 0))
        self._refresh()

    def ended(self, run_id: str, planned: int, complete: bool) -> None:
        """A cell ended: all its `planned` steps trained when `complete`; otherwise only
        those it reported, and the rest leave the total."""
        trained = self.running_steps.pop(run_id, 0)
        if complete:
            trained = planned
        self.ended_steps += trained
        self.dropped += max(0, planned - trained)
        self._refresh()

    def drop(self, steps: int) -> None:
        """Planned steps that this launch will not train (cells it will not start)."""
        self.dropped += steps
        self._refresh()

    def update(self, counts: Mapping[str, Counter], running: int) -> None:
        """`counts`: phase -> outcome -> cells (`stale` runs are not cells of this launch)."""
        done = sum(n for c in counts.values() for k, n in c.items() if k != "stale")
        failed = sum(c["failed"] + c["killed"] for c in counts.values())
        diverged = sum(c["diverged"] for c in counts.values())
        self.status = {"cells": done, "running": running, "failed": failed, "diverged": diverged}
        self._refresh()

    # what it shows ---------------------------------------------------------------------
    @property
    def total(self) -> int:
        return self.planned - self.dropped

    @property
    def done(self) -> int:
        """Steps done: skipped before this launch, or trained in it."""
        return self.skipped_steps + self.trained_here

    @property
    def trained_here(self) -> int:
        return self.ended_steps + sum(self.running_steps.values())

    def rate(self) -> float | None:
        """Steps trained in this launch per second since its training started; None before
        `WARM_UP` seconds of it (the first reports say little about the pace)."""
        if self.training_since is None:
            return None
        seconds = self.progress.get_time() - self.training_since
        if seconds < WARM_UP or self.trained_here == 0:
            return None
        return self.trained_here / seconds

    def eta(self) -> float | None:
        """Seconds until the steps left are trained at `rate`; 0 when none are left."""
        left = self.total - self.done
        if left <= 0:
            return 0.0
        rate = self.rate()
        return None if rate is None else left / rate

    def fields(self) -> list[tuple[int, str]]:
        """(keep, text) of each field in the order shown; the lowest `keep` goes first when
        the line is too long."""
        rate, eta = self.rate(), self.eta()
        s = self.status
        elapsed = _clock(self.progress.get_time() - self.opened)
        return [
            (9, f"{self.done:,}/{self.total:,} steps"),
            (4, f"cells {s['cells']}/{self.cells}"),
            (2, f"running {s['running']}"),
            (5, f"failed {s['failed']}"),
            (5, f"diverged {s['diverged']}"),
            (3, "- steps/s" if rate is None else f"{_number(rate)} steps/s"),
            (1, f"{elapsed} elapsed"),
            (8, f"ETA {'-:--:--' if eta is None else _clock(eta)}"),
        ]

    def layout(self, task: Task) -> tuple[int, str]:
        """The bar's width and the fields' text that fit the console's width on one line."""
        room = self.progress.console.width - len(task.description) - 3  # column gaps, margin
        fields = self.fields()
        text = _joined(fields)
        while len(text) > room - MIN_BAR and len(fields) > 1:
            fields.remove(min(fields, key=lambda f: f[0]))
            text = _joined(fields)
        return max(MIN_BAR, min(MAX_BAR, room - len(text))), text

    def _refresh(self) -> None:
        self.progress.update(self.task_id, completed=self.done, total=max(self.total, 1))


class _Bar(BarColumn):
    """The grid's bar, as wide as the line leaves room for."""

    def __init__(self, grid: GridProgress) -> None:
        super().__init__()
        self.grid = grid

    def render(self, task: Task) -> ProgressBar:
        self.bar_width = self.grid.layout(task)[0]
        return super().render(task)


class _Fields(ProgressColumn):
    """The grid's steps, cells, rate, elapsed time and ETA, as `GridProgress.layout` fits them."""

    def __init__(self, grid: GridProgress) -> None:
        super().__init__(Column(no_wrap=True, overflow="crop"))
        self.grid = grid

    def render(self, task: Task) -> Text:
        return Text(self.grid.layout(task)[1])


def _joined(fields: list[tuple[int, str]]) -> str:
    return " · ".join(text for _, text in fields)


def _clock(seconds: float) -> str:
    """h:mm:ss, as Rich writes times."""
    return str(timedelta(seconds=max(0, round(seconds))))


def _number(rate: float) -> str:
    """310, 31, 3.1, 0.31: two significant digits at least, thousands separated."""
    return f"{rate:,.0f}" if rate >= 10 else f"{rate:.2g}"
