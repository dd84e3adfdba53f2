"""Task registry: names used in grids and on the command line, mapped to `Task` entries."""

from __future__ import annotations

from tasks.base import Split, Task, TaskData, TaskInputError
from tasks.synthetic import SYNTHETIC_TASKS
from tasks.text import TEXT_TASKS

TASKS: dict[str, Task] = {t.name: t for t in (*SYNTHETIC_TASKS, *TEXT_TASKS)}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise TaskInputError(
            f"unknown task {name!r} (choose from: {', '.join(sorted(TASKS))})"
        ) from None


__all__ = ["TASKS", "Split", "Task", "TaskData", "TaskInputError", "get_task"]
