"""How a task is scored: its metric and its loss, declared once with the task.

A task names a `Metric` (as AlgoPerf's Workload declares its metric): the name used in metric
keys (`val/<name>`, `test/<name>`), how reports label it, its direction and range, and how it
is computed from a model's outputs. Everything downstream (evaluation, tags, the report) reads
these fields, so a task with a new metric needs a new `Metric` here or in its own module and
no other change.

Every metric is a mean over scored positions: each scored position contributes
`position_score(logits, targets, token_loss)`, the sums and counts are kept per test example,
and the metric is `sum(score) / n_positions / divisor`. Per example that gives
`metric_sum = score / divisor` and `n_tokens`, so the test metric is
sum(metric_sum) / sum(n_tokens): exactly for counting metrics such as accuracy (integer sums),
to float32 summation order for continuous ones such as bits per character. `divisor` lets a
metric divide once at the end (nats summed, then divided by ln 2), which keeps the logged value
the same as dividing the mean loss.

The loss (what training minimises, and `<split>/loss` in nats) is declared beside it: a
function (logits, targets, reduction) -> tensor, with `reduction="none"` giving the loss of
every scored position.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

# (logits (n, C), targets (n,), token_loss (n,) nats) -> a value per scored position (n,)
PositionScore = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Loss(Protocol):
    def __call__(
        self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
    ) -> torch.Tensor: ...


def cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy in nats over scored positions (or sequences, for classification)."""
    return F.cross_entropy(logits, targets, reduction=reduction)


@dataclass(frozen=True)
class Metric:
    name: str  # in metric keys: val/<name>, test/<name>
    label: str  # how reports and `harness list` name it
    higher_is_better: bool
    bounds: tuple[float, float]  # the range of its values, inf allowed
    position_score: PositionScore  # summed over scored positions, see the module docstring
    divisor: float = 1.0  # metric = sum(position_score) / n_positions / divisor

    def __str__(self) -> str:
        return self.name

    def value(self, score_sum: float, n_positions: float) -> float:
        """The metric from the summed position scores of `n_positions` scored positions."""
        return score_sum / n_positions / self.divisor

    def reached(self, value: float, target: float) -> bool:
        """Whether `value` is at least as good as `target` in this metric's direction."""
        return value >= target if self.higher_is_better else value <= target

    @property
    def comparison(self) -> str:
        """`>=` or `<=`: how a value meets a target."""
        return ">=" if self.higher_is_better else "<="

    @property
    def bounds_text(self) -> str:
        """The bounds as "lo,hi" ("0,1", "0,inf"), the run schema's METRIC_BOUNDS tag."""
        return ",".join(f"{b:g}" for b in self.bounds)


def correct(logits: torch.Tensor, targets: torch.Tensor, token_loss: torch.Tensor) -> torch.Tensor:
    """1 where the arg-max prediction is the target, else 0 (in the loss's dtype)."""
    return (logits.argmax(-1) == targets).to(token_loss.dtype)


def nats(logits: torch.Tensor, targets: torch.Tensor, token_loss: torch.Tensor) -> torch.Tensor:
    """The position's loss itself (nats), for metrics that rescale the loss."""
    return token_loss


ACCURACY = Metric("acc", "accuracy", True, (0.0, 1.0), correct)
BITS_PER_CHARACTER = Metric(
    "bpc", "bits per character", False, (0.0, math.inf), nats, divisor=math.log(2)
)


def sum_per_example(values: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(k, n_positions) values of scored positions -> (k, B) sums per example.

    Scored positions come row-major (as a boolean mask flattens them), so the owner of each is
    its row repeated by the row's count; `output_size` keeps that free of a host sync.
    """
    rows = torch.arange(len(counts), device=counts.device)
    owner = torch.repeat_interleave(rows, counts, output_size=values.shape[1])
    out = values.new_zeros(values.shape[0], len(counts))
    for i in range(values.shape[0]):
        out[i].index_add_(0, owner, values[i])
    return out
