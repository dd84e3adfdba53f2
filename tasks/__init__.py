"""Task registry: names used in grids and on the command line, mapped to `Task` entries.

Each entry's `params` is its parameters model (a `tasks.params.TaskParams` subclass: defaults,
ranges, descriptions, checks across fields); its `build` receives the resolved values.
"""

from __future__ import annotations

from tasks.base import Split, Task, TaskData, TaskInputError
from tasks.params import TaskParams
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


__all__ = ["TASKS", "Split", "Task", "TaskData", "TaskInputError", "TaskParams", "get_task"]
