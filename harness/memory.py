"""A rough estimate of the memory a training run needs, checked before any run starts.

Where cells run on this machine (`harness train`; `harness run` with the local backend, or
Ray started here), `check_fits` refuses, in one line naming the estimate and the sizes behind
it, a configuration whose model, batch or sequence could not fit in this machine's physical
memory with the grid's workers running at once, rather than a run that dies (or swaps the
machine to a halt) later. Grids meant for a cluster are not judged by the machine that
launches them, and `status` or loading a grid never are.

The estimate is generous, to catch configurations that are clearly too large, not to tune
batch sizes: float32 everywhere; training keeps every layer's activations for the backward
pass; evaluation (no gradients, one layer at a time, at `EVAL_BATCH_SIZE` examples) holds one
layer's attention matrices and the output logits; the larger of the two counts.
"""

from __future__ import annotations

import os
from typing import Any

from harness.errors import UserError
from tasks.loaders import EVAL_BATCH_SIZE

FLOAT_BYTES = 4  # float32 parameters and activations
OPTIMIZER_COPIES = 4  # weights, gradients and up to two optimizer states (Adam's moments)
HELD_OUT_EXAMPLES = 2000  # the largest validation plus test split a task builds


def memory_estimate(run: Any) -> dict[str, int] | None:
    """A rough bound, in bytes, of what one run holds at once: parameters with their
    gradients and optimizer states, the larger of a training step's and an evaluation batch's
    activations (attention matrices and output logits included), and the task's data tensors.
    `run` is a validated `harness.config.run_model(...)` instance; None when the task cannot
    bound its sizes from its parameters alone."""
    bounds = run.task.size_bounds()
    if bounds is None:
        return None
    length, vocab, examples = bounds
    m = run.model
    heads, per_head = run.attention.heads()
    width = heads * per_head if per_head else m.d_k  # the query/key width of a layer
    batch, d, d_ff, layers = run.train.batch_size, m.d_model, m.d_ff, m.n_layers
    weights = 2 * vocab * d + length * d + layers * (2 * d * width + 2 * d * d + 2 * d * d_ff)
    per_layer = batch * length * (10 * d + 2 * d_ff + 3 * width) + 3 * batch * heads * length**2
    training = layers * per_layer + 3 * batch * length * vocab
    one_layer = length * (4 * d + d_ff + 2 * width) + 2 * heads * length**2
    evaluation = EVAL_BATCH_SIZE * (one_layer + 2 * length * vocab)
    return {
        "parameters": OPTIMIZER_COPIES * FLOAT_BYTES * weights,
        "activations": FLOAT_BYTES * max(training, evaluation),
        "data": (examples + HELD_OUT_EXAMPLES) * length * 18,  # x, y (int64), two bool masks
    }


def machine_memory() -> int:
    """This machine's physical memory in bytes (0 when the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def check_fits(cfg: Any, workers: int = 1) -> None:
    """Refuse, with the estimate, a run (`harness.config.RunConfig`) that could not fit in
    this machine's memory with `workers` such runs at once: a one-line UserError."""
    from harness.config import validated_run

    run = validated_run(cfg)
    estimate, available = memory_estimate(run), machine_memory()
    if estimate is None or not available or workers * sum(estimate.values()) <= available:
        return
    parts = ", ".join(f"{_gib(v)} {k}" for k, v in estimate.items())
    shown = {
        "model": run.model.model_dump(exclude={"dropout"}),
        "train": {"batch_size": run.train.batch_size},
    }
    sizes = ", ".join(f"{s}.{k}={v}" for s, values in shown.items() for k, v in values.items())
    times = f" per run x {workers} workers at once" if workers > 1 else ""
    raise UserError(
        f"needs about {_gib(sum(estimate.values()))} of memory{times} ({parts}; {sizes}), "
        f"more than this machine's {_gib(available)}"
        + ("; use fewer --workers" if workers > 1 and sum(estimate.values()) <= available else "")
    )


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"
