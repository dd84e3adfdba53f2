"""The grid's progress line, drawn from a fake clock: steps across workers, a rate over the
whole launch (not Rich's last 30 s), an ETA that holds when a cell takes minutes."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from harness.progress import WARM_UP, GridProgress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _bar(cells: int, steps: int, width: int = 120) -> tuple[GridProgress, Clock]:
    clock = Clock()
    console = Console(record=True, width=width, color_system=None)
    return GridProgress("grid", cells, steps, console, get_time=clock), clock


def _line(bar: GridProgress) -> str:
    """The line as the terminal would show it now."""
    console = bar.progress.console
    console.print(bar.progress.get_renderable())
    (line,) = console.export_text().strip().splitlines()
    return line


def test_cells_longer_than_rich_s_30_s_window_still_give_a_finite_eta() -> None:
    """Two cells of 6,000 steps, one worker at 30 steps/s: 200 s a cell. Reports come 40 s
    apart, longer than Rich's speed window, and the ETA is the steps left over the rate."""
    bar, clock = _bar(cells=2, steps=12_000, width=160)
    clock.now = 5.0
    bar.trained("a", 1, 0.05)  # the first step: when training started, not yet a pace
    bar.update({"tune": Counter()}, running=1)
    assert "ETA -:--:--" in _line(bar) and "- steps/s" in _line(bar)
    clock.now = 4.95 + WARM_UP - 0.01
    assert "ETA -:--:--" in _line(bar)
    clock.now = 45.0
    bar.trained("a", 1_200, 40.05)
    line = _line(bar)
    assert "1,200/12,000 steps" in line and "cells 0/2" in line and "running 1" in line
    assert "30 steps/s" in line and "ETA 0:06:00" in line  # 10,800 steps at 30 a second
    assert "0:00:45 elapsed" in line
    clock.now = 85.0  # no report for 40 s: the rate is steps over the time since the start
    assert "ETA 0:12:00" in _line(bar)  # 10,800 steps at 15 a second
    bar.trained("a", 2_400, 80.05)
    assert "ETA 0:05:20" in _line(bar)  # 9,600 steps at 30 a second


def test_skipped_cells_are_done_but_do_not_count_in_the_rate() -> None:
    """Five cells of 6,000 steps finished in an earlier launch; the sixth trains at 10 a second."""
    bar, clock = _bar(cells=6, steps=36_000)
    bar.skipped(30_000)
    bar.update({"final": Counter(skipped=5)}, running=0)
    assert "30,000/36,000 steps" in _line(bar) and "cells 5/6" in _line(bar)
    clock.now = 70.0
    bar.trained("f", 600, 60.0)
    line = _line(bar)
    assert "30,600/36,000 steps" in line
    assert "10 steps/s" in line and "ETA 0:09:00" in line  # 5,400 steps left at 10 a second


@pytest.mark.parametrize("outcome", ["diverged", "failed", "killed"])
def test_a_cell_that_ends_early_takes_its_remaining_steps_off_the_total(outcome: str) -> None:
    bar, clock = _bar(cells=2, steps=2_000)
    clock.now = 30.0
    bar.trained("a", 300, 30.0)
    bar.trained("b", 200, 20.0)  # started 10 s after the first
    bar.ended("a", 1_000, complete=False)  # stopped at its 300th step
    bar.update({"tune": Counter({outcome: 1})}, running=1)
    line = _line(bar)
    assert "500/1,300 steps" in line and "cells 1/2" in line  # 2,000 - 700
    failed, diverged = (0, 1) if outcome == "diverged" else (1, 0)
    assert f"failed {failed}" in line and f"diverged {diverged}" in line
    # the rate counts only the steps trained: 500 in 30 s; 800 left
    assert "17 steps/s" in line and "ETA 0:00:48" in line
    clock.now = 78.0
    bar.ended("b", 1_000, complete=True)
    bar.update({"tune": Counter({outcome: 1, "ok": 1})}, running=0)
    line = _line(bar)
    assert "1,300/1,300 steps" in line and "cells 2/2" in line and "ETA 0:00:00" in line
    assert bar.progress.tasks[0].finished  # the bar is full


def test_cells_that_will_not_run_leave_the_total() -> None:
    bar, _ = _bar(cells=3, steps=300)
    bar.drop(100)  # a group's final cell, held back by a failed tune cell
    assert "0/200 steps" in _line(bar)


@pytest.mark.parametrize("width", [60, 80, 100, 120, 160])
def test_the_line_fits_the_terminal_dropping_fields_from_the_least_needed(width: int) -> None:
    bar, clock = _bar(cells=44, steps=48_000, width=width)
    clock.now = 70.0
    bar.trained("a", 12_340, 69.0)
    bar.update({"tune": Counter(ok=6, diverged=1)}, running=2)
    line = _line(bar)
    assert len(line) <= width
    assert line.startswith("grid ") and "━" in line  # the bar itself
    assert "12,340/48,000 steps" in line and "ETA 0:03:19" in line  # always shown
    if width >= 100:
        assert "cells 7/44" in line and "diverged 1" in line and "179 steps/s" in line
    if width >= 160:
        assert "running 2" in line and "0:01:10 elapsed" in line


def test_without_progress_nothing_is_drawn() -> None:
    clock = Clock()
    console = Console(record=True, width=120)
    with GridProgress("grid", 1, 100, console, enabled=False, get_time=clock) as bar:
        bar.trained("a", 50, 5.0)
        bar.update({"final": Counter()}, running=1)
    assert console.export_text() == ""


# --------------------------------------------------------------------------- in a terminal

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
FINITE_ETA = re.compile(r"(\d+):(\d\d):(\d\d)$")  # the line's last field; not -:--:--
LONG_CELLS = {  # two cells of a tiny copy model, 100,000 steps each: minutes on 2 cores
    "name": "long",
    "protocol": "fixed",
    "tasks": [{"name": "copy", "params": {"length": 4, "n_train": 512}}],
    "attention": ["dot"],
    "optimizers": [{"name": "adam", "lr": 0.003}],
    "seeds": [0, 1],
    "model": {"d_model": 16, "d_ff": 32, "d_k": 8, "n_layers": 1},
    "train": {"batch_size": 32},
    "budget": {"steps": 100_000, "val_every": 50_000},
}


@pytest.mark.slow  # about a minute on 2 cores: `make test-slow` (CI runs both suites)
def test_a_grid_of_minute_long_cells_shows_a_finite_eta_within_its_first_cell(
    tracking_uri: str, tmp_path: Path
) -> None:
    """`harness run` in a pseudo-terminal, drawing live as for a user: an ETA appears while
    the first of two cells that take over a minute each still trains (cells 0/2)."""
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(LONG_CELLS))
    here, there = pty.openpty()
    fcntl.ioctl(there, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TTY_COMPATIBLE")}
    env |= {"TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    command = [sys.executable, "-m", "harness", "run", str(path), "--tracking-uri", tracking_uri,
               "--workers", "1", "--accelerator", "cpu"]  # fmt: skip
    launcher = subprocess.Popen(
        command, cwd=tmp_path, stdin=there, stdout=there, stderr=there, env=env,
        start_new_session=True,  # its own process group: killed with its worker
    )  # fmt: skip
    os.close(there)
    shown, line = "", None
    try:
        deadline = time.monotonic() + 170
        while line is None and time.monotonic() < deadline and launcher.poll() is None:
            if select.select([here], [], [], 1.0)[0]:
                try:
                    shown += os.read(here, 65536).decode(errors="replace")
                except OSError:  # the terminal closed: the launcher ended
                    break
            *drawn, _ = re.split(r"[\r\n]", ANSI.sub("", shown))  # the last one may be partial
            line = next((d.rstrip() for d in drawn if FINITE_ETA.search(d.rstrip())), None)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
        os.close(here)
    assert line is not None, f"no finite ETA within the first cell; the terminal showed:\n{shown}"
    assert line.startswith("long ") and len(line) <= 120, line
    assert "cells 0/2" in line and " · ETA " in line, line
    # the premise: at the rate shown, a cell of 100,000 steps takes over a minute
    rate = float(re.search(r"([\d.,]+) steps/s", line)[1].replace(",", ""))
    assert 100_000 / rate > 60, line
    hours, minutes, seconds = map(int, FINITE_ETA.search(line).groups())
    assert 3600 * hours + 60 * minutes + seconds > 60, line  # two such cells are left
    print(line)  # what the terminal showed (pytest -s)
