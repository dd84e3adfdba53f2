"""The events a real `Launcher` handles, for tests of what reaches its progress bar: each
event with the steps the bar counted as done just before the launcher handled it.

Importable from every test folder: pytest puts tests/ on sys.path for tests/conftest.py.
"""

from __future__ import annotations

from typing import Any

from harness.backends.base import Done, Event, Lost, Steps
from harness.launch import Launcher


def record(launcher: Launcher) -> list[tuple[Event, int]]:
    """From now on, note every event `launcher` handles (an instance attribute wraps its
    `_handle`; the launcher's own code runs unchanged)."""
    seen: list[tuple[Event, int]] = []
    handle = launcher._handle

    def noted(event: Event) -> None:
        seen.append((event, launcher.bar.done))
        handle(event)

    launcher._handle = noted  # type: ignore[method-assign]
    return seen


def steps_before_end(seen: list[tuple[Event, Any]]) -> dict[str, list[Steps]]:
    """Per run that ended, the `Steps` handled before its `Done` or `Lost`."""
    reports: dict[str, list[Steps]] = {}
    ended: dict[str, list[Steps]] = {}
    for event, _ in seen:
        if isinstance(event, Steps):
            reports.setdefault(event.run_id, []).append(event)
        elif isinstance(event, Done | Lost):
            ended[event.run_id] = reports.pop(event.run_id, [])
    return ended
