"""Checks a grid passes before any run exists, so a bad value is one line and exit 2, not a
failed run: every distinct task's data and model is built once (task parameters, corpus
paths, attention parameters), and, when its cells run on this machine, each configuration
must fit in its memory with the grid's workers at once (harness.memory). `harness run` calls
it, `--dry-run` included."""

from __future__ import annotations

import json

from harness.errors import UserError
from harness.grid import final_cells, groups
from harness.spec import GridSpec


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
