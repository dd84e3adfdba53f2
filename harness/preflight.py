"""Checks a grid passes before any run exists, so a bad value is one line and exit 2, not a
failed run: every distinct task's data and model is built once (task parameters, corpus
paths, attention parameters), and, when its cells run on this machine, each configuration
must fit in its memory with the grid's workers at once (harness.memory). `harness run` calls
it, `--dry-run` included. `check_accelerator` checks `--accelerator` of `run` and `train`."""

from __future__ import annotations

import json

from harness.errors import UserError
from harness.grid import final_cells, groups
from harness.spec import GridSpec

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")  # Lightning names of one device kind


def check_accelerator(name: str, here: bool = True) -> str:
    """`--accelerator` is one of ACCELERATORS and, when cells train `here` (on this machine),
    a GPU it asks for is one torch sees: otherwise Lightning would fail inside the first run.
    (Cells on a Ray cluster train elsewhere: its GPUs are not checked here.)"""
    if name not in ACCELERATORS:
        raise UserError(f"--accelerator {name!r}: choose from {', '.join(ACCELERATORS)}")
    if not here or name in ("auto", "cpu"):
        return name
    import torch

    cuda = torch.cuda.is_available()
    mps = torch.backends.mps.is_available()
    found = {"gpu": cuda or mps, "cuda": cuda, "mps": mps}[name]
    if not found:
        what = {"gpu": "GPU (CUDA or MPS)", "cuda": "CUDA GPU", "mps": "MPS device"}[name]
        raise UserError(f"--accelerator {name}: torch sees no {what} on this machine "
                        "(use auto or cpu)")  # fmt: skip
    return name


def check_cells(spec: GridSpec, workers_here: int | None = None) -> None:
    """Build each distinct data and model configuration of the grid once and, with
    `workers_here` (the workers that will run cells on this machine), check that it fits in
    memory; a `UserError` is raised again with the group's label in front."""
    from harness.memory import check_fits
    from harness.train import prepare

    seen: set[str] = set()
    for group in groups(spec):
        cfg = final_cells(spec, group, group.fixed_lr)[0]
        key = json.dumps([cfg.task_params, cfg.task, cfg.model, cfg.attention_params])
        try:
            if workers_here:  # cheap, and it depends on train.* too: every group
                check_fits(cfg, workers_here)
            if key not in seen:
                seen.add(key)
                prepare(cfg)
        except UserError as err:
            raise UserError(f"{group.label}: {err}") from None
