"""Batches of a split, as the trainer and the attention probe read them.

A batch is a dict of tensors: `x` and `y` always, `score_mask` and `padding` when the split
has them. The data of a run is small and lives in memory, so loaders are plain iterables over
index slices of tensors already on the device (no DataLoader workers, no copies per batch).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from tasks.base import Split

Batch = dict[str, torch.Tensor]
EVAL_BATCH_SIZE = 500


def batch(split: Split, index: torch.Tensor | slice) -> Batch:
    """The examples of `split` at `index` (a slice or a tensor of row numbers)."""
    out = {"x": split.x[index], "y": split.y[index]}
    if split.score_mask is not None:
        out["score_mask"] = split.score_mask[index]
    if split.padding is not None:
        out["padding"] = split.padding[index]
    return out


def to_device(split: Split, device: torch.device) -> Split:
    """Data goes to the device once per run, not once per batch."""
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return Split(move(split.x), move(split.y), move(split.score_mask), move(split.padding))


class RandomBatches:
    """Endless training batches: a fresh permutation of the split every pass, from `seed`."""

    def __init__(self, split: Split, batch_size: int, seed: int) -> None:
        self.split, self.batch_size = split, min(batch_size, len(split))
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[Batch]:
        n = len(self.split)
        while True:
            order = torch.randperm(n, generator=self.generator).to(self.split.x.device)
            for start in range(0, n - self.batch_size + 1, self.batch_size):
                yield batch(self.split, order[start : start + self.batch_size])


class EvalBatches:
    """The whole split in fixed order (a plain list would read as several loaders)."""

    def __init__(self, split: Split, batch_size: int = EVAL_BATCH_SIZE) -> None:
        n = len(split)
        self.batches = [
            batch(split, slice(i, min(i + batch_size, n))) for i in range(0, n, batch_size)
        ]

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
