"""Task registry: names used in grids and on the command line, mapped to `Task` entries.

A task is one module in this package that defines `TASK_ENTRIES`, a tuple of `Task`s; the
registry imports every module here and collects them, so adding a task (with a new metric
from `tasks.metrics.Metric`) is one new file. Modules are read in name order; two tasks of
one name are an error at import.

Each entry's `params` is its parameters model (a `tasks.params.TaskParams` subclass: defaults,
ranges, descriptions, checks across fields); its `build` receives the resolved values.
"""

from __future__ import annotations

import importlib
import pkgutil

from tasks.base import Split, Task, TaskData, TaskInputError
from tasks.params import TaskParams


def _collect() -> dict[str, Task]:
    found: dict[str, Task] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for task in getattr(module, "TASK_ENTRIES", ()):
            if task.name in found:
                raise RuntimeError(f"task {task.name!r} is defined twice (in {module.__name__})")
            found[task.name] = task
    return found


TASKS: dict[str, Task] = _collect()


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise TaskInputError(
            f"unknown task {name!r} (choose from: {', '.join(sorted(TASKS))})"
        ) from None


__all__ = ["TASKS", "Split", "Task", "TaskData", "TaskInputError", "TaskParams", "get_task"]
