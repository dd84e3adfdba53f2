"""A rough upper bound of the memory one training run needs, checked before any run starts.

`resolve` (harness.config) calls `check_memory` on every run it resolves, so a grid or a
`--set` whose model, batch or sequence could not fit in this machine's physical memory is one
line naming the estimate and the sizes behind it, not a run that dies (or swaps the machine to
a halt) later. The bound is deliberately generous (a refused run would not fit even in an
empty machine): float32 everywhere, every activation of a step kept for the backward pass.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

FLOAT_BYTES = 4  # float32 parameters and activations
OPTIMIZER_COPIES = 4  # weights, gradients and up to two optimizer states (Adam's moments)
HELD_OUT_EXAMPLES = 2000  # the largest validation plus test split a task builds


def memory_estimate(run: Any) -> dict[str, int] | None:
    """A rough upper bound, in bytes, of what training `run` holds at once: parameters with
    their gradients and optimizer states, one step's activations (kept for the backward pass,
    attention matrices and output logits included) and the task's data tensors.
    `run` is a validated `harness.config.run_model(...)` instance; None when the task cannot
    bound its sizes from its parameters alone."""
    bounds = run.task.size_bounds()
    if bounds is None:
        return None
    length, vocab, examples = bounds
    m = run.model
    heads = run.attention.heads()[0]
    batch = run.train.batch_size
    d, d_ff, d_k, layers = m.d_model, m.d_ff, m.d_k, m.n_layers
    weights = 2 * vocab * d + length * d + layers * (2 * d * d_k + 2 * d * d + 2 * d * d_ff)
    per_layer = batch * length * (10 * d + 2 * d_ff + 3 * d_k) + 3 * batch * heads * length**2
    activations = layers * per_layer + 3 * batch * length * vocab
    return {
        "parameters": OPTIMIZER_COPIES * FLOAT_BYTES * weights,
        "activations": FLOAT_BYTES * activations,
        "data": (examples + HELD_OUT_EXAMPLES) * length * 18,  # x, y (int64), two bool masks
    }


def machine_memory() -> int:
    """This machine's physical memory in bytes (0 when the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def check_memory(run: Any, error: Callable[[None, str], Exception]) -> None:
    """Refuse, with the estimate, a run that could not fit in this machine's memory: raise
    `error(None, message)` (the message is one line)."""
    estimate, available = memory_estimate(run), machine_memory()
    if estimate is None or not available or sum(estimate.values()) <= available:
        return
    parts = ", ".join(f"{_gib(v)} {k}" for k, v in estimate.items())
    shown = {
        "model": run.model.model_dump(exclude={"dropout"}),
        "train": {"batch_size": run.train.batch_size},
    }
    sizes = ", ".join(f"{s}.{k}={v}" for s, values in shown.items() for k, v in values.items())
    raise error(
        None,
        f"needs about {_gib(sum(estimate.values()))} of memory ({parts}; {sizes}), more than "
        f"this machine's {_gib(available)}",
    )


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"
