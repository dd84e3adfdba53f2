"""What every task provides: its declaration (`Task`) and its data (`TaskData`).

A task is a registry entry, not a class hierarchy: a name, what kind of
prediction it asks for, how it is scored (its `Metric` and loss, see tasks.metrics), its
parameters with defaults, and a `build` function that turns parameters and a seed into tensors.

Conventions shared by all tasks:
- Inputs are token ids, shape (N, L), dtype long, right-padded with id 0 when
  sequences differ in length (`padding` is then True at padded positions).
- Per-token tasks (`kind="token"`) give targets of shape (N, L) and a boolean
  `score_mask` of the same shape saying which positions are scored; targets at
  unscored positions are 0 and never read.
- Classification tasks (`kind="classification"`) give targets of shape (N,).
- Validation and test splits depend only on the task parameters; the run seed
  changes the training data (fresh samples for synthetic tasks) and its order,
  so seeds are independent repetitions evaluated on the same held-out data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from tasks.metrics import Loss, Metric, cross_entropy
from tasks.params import TaskParams

Kind = Literal["token", "classification"]


class TaskInputError(ValueError):
    """Bad task input the user can fix (a missing corpus, a file without the named column).

    The message is one line that names the bad value; the CLI prints it and exits 2.
    """


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # (N, L) long token ids
    y: torch.Tensor  # (N, L) long for token tasks, (N,) long for classification
    score_mask: torch.Tensor | None = None  # (N, L) bool, token tasks only
    padding: torch.Tensor | None = None  # (N, L) bool, True where padded

    def __len__(self) -> int:
        return self.x.shape[0]


def scored_targets(split: Split) -> torch.Tensor:
    """Targets at scored positions (all of them for classification), flattened."""
    return split.y if split.score_mask is None else split.y[split.score_mask]


def majority_accuracy(train: Split, test: Split) -> float:
    """Chance level of an accuracy task: test accuracy of always answering the most frequent
    training target at scored positions (the most common class for classification; ties go
    to the smallest id). It is the best predictor that ignores the input."""
    majority = torch.bincount(scored_targets(train)).argmax()  # first of equal counts
    return (scored_targets(test) == majority).double().mean().item()


@dataclass(frozen=True)
class TaskData:
    train: Split
    val: Split
    test: Split
    vocab_size: int  # number of input token ids (embedding rows)
    n_outputs: int  # classes, or output vocabulary for per-token tasks
    # Facts about the data worth recording with the run (logged as `data.<key>`). Every task
    # gives `chance`: the test-split score, on the task's metric, of the best input-blind
    # predictor fitted on the training split (`majority_accuracy`, or char_lm's unigram model).
    info: dict[str, float | int | str] = field(default_factory=dict)
    # Optional readable token names, for labelling attention maps.
    itos: list[str] | None = None

    @property
    def seq_len(self) -> int:
        return self.train.x.shape[1]


@dataclass(frozen=True)
class Task:
    name: str
    kind: Kind
    metric: Metric  # how the task is scored (name, label, direction, bounds, computation)
    # Time-to-target threshold on the metric (reached as `metric.reached(value, target)` says).
    target: float
    causal: bool  # whether the model may only look at earlier positions
    default_steps: int  # training steps when the user gives none
    params: type[TaskParams]  # its parameters: defaults, ranges, descriptions
    build: Callable[[Mapping[str, Any], int], TaskData]  # (resolved params, seed) -> data
    description: str
    loss: Loss = cross_entropy  # what training minimises; `<split>/loss` in nats
    # `build` reads nothing but its parameters and the seed (no files): a process may keep
    # the data it built and reuse it for the next cell of the same data (tasks.cache).
    pure: bool = False

    @property
    def higher_is_better(self) -> bool:
        return self.metric.higher_is_better
