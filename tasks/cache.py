"""Task data kept for the life of a process, so a worker that trains many cells builds the
data of one (task, parameters, seed) once.

A grid repeats data: every attention kind, optimizer, learning rate and sweep point of a task
trains on the same data for one seed (the quick grid's 44 cells use 9 seeds). A worker process
keeps the `TaskData` it built, least recently used first out, up to MAX_BYTES of tensors: that
much memory a worker may hold on top of what its run needs (harness.memory's estimate counts
one run's data only), and data larger than that is not kept at all.

Only a task marked `pure` (its `build` reads nothing but its parameters and the seed: the
synthetic tasks) is kept: what a cached entry holds is then exactly what a fresh build gives.
Tasks that read files (char_lm, text_cls) are built every time; they keep their own
seed-independent work in caches keyed by the files' sizes and modification times
(tasks.corpus, tasks.text), so an edited corpus is read again.

Nothing may write into a cached `TaskData`: training reads its tensors (batches are copies or
views) and never changes them.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from tasks.base import Split, Task, TaskData

MAX_BYTES = 256 * 2**20  # a synthetic task's default data is 7-15 MiB a seed


class DataCache:
    """Built `TaskData` by (task, parameters, seed), least recently used evicted first."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str, int], tuple[TaskData, int]] = OrderedDict()
        self.bytes = 0  # tensor bytes held
        self.hits = self.misses = 0

    def build(self, task: Task, params: Mapping[str, Any], seed: int) -> TaskData:
        """`task.build(params, seed)`, or the data an earlier identical call built."""
        if not task.pure:
            return task.build(params, seed)
        key = (task.name, json.dumps(dict(params), sort_keys=True, default=repr), seed)
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return found[0]
        self.misses += 1
        data = task.build(params, seed)
        size = data_bytes(data)
        if size <= self.max_bytes:
            self._entries[key] = (data, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.bytes -= evicted
        return data

    def __len__(self) -> int:
        return len(self._entries)


def data_bytes(data: TaskData) -> int:
    """Bytes of every tensor of the three splits."""
    return sum(_split_bytes(split) for split in (data.train, data.val, data.test))


def _split_bytes(split: Split) -> int:
    tensors = (split.x, split.y, split.score_mask, split.padding)
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


_PROCESS_CACHE = DataCache()


def build_data(task: Task, params: Mapping[str, Any], seed: int) -> TaskData:
    """The task's data through this process's cache (`DataCache`)."""
    return _PROCESS_CACHE.build(task, params, seed)
