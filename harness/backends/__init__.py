"""Backends that run grid cells: `local` (worker processes on this machine) and `ray` (actors
on a local Ray instance or a Ray cluster).

Each backend is a module here named for it that offers:
- `OPTIONS`: its command-line options, flag -> argparse keywords (`--ray-address`), which
  `harness run` adds and which reach the backend's functions as keywords (`ray_address`);
- `check(tracking_uri, accelerator, **options)`: refuses, before anything is created, what
  cannot work (a Ray cluster without GPUs for `--accelerator gpu`);
- `make_pool(workers, accelerator, tracking_uri, **options)`: a `Pool` (harness.backends.base),
  `workers` None meaning the backend's own default;
- `workers_here(workers, **options)`: how many of its workers run on this machine (for the
  memory check before a grid), None when they run elsewhere.
The launcher sees only the `Pool`; adding a backend is one module and its name in BACKENDS.

One option is every backend's: `cells_per_gpu` N, how many cells share one GPU (local: N x G
worker processes on G GPUs, worker i on GPU i % G; ray: each actor asks for 1/N of a GPU).
`chosen_options` takes it from `args.cells_per_gpu` when the command line has that flag
(CELLS_PER_GPU_FLAG) and checks it there, where the accelerator is known.
"""

from __future__ import annotations

import argparse
import importlib
from types import ModuleType
from typing import Any

from harness.backends.base import Pool
from harness.errors import UserError

BACKENDS = ("local", "ray")
CELLS_PER_GPU_FLAG: dict[str, Any] = {  # `harness run --cells-per-gpu N`, for every backend
    "type": int,
    "metavar": "N",
    "help": "train N cells at once on each GPU (N x GPUs workers); needs --accelerator gpu "
    "or auto on a machine with GPUs",
}


def backend(name: str) -> ModuleType:
    return importlib.import_module(f"harness.backends.{name}")


def add_options(parser: argparse.ArgumentParser) -> None:
    """`--backend` and every backend's own options."""
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="local",
        help="local: worker processes here (default); ray: Ray actors, here or on a cluster",
    )
    for name in BACKENDS:
        for flag, keywords in backend(name).OPTIONS.items():
            parser.add_argument(flag, **keywords)


def chosen_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options given for `args.backend`, as keywords; an option of another backend is
    a user error naming it."""
    options: dict[str, Any] = {}
    for name in BACKENDS:
        for flag in backend(name).OPTIONS:
            key = flag.lstrip("-").replace("-", "_")
            value = getattr(args, key, None)
            if value is None or value == "":  # not given (or given empty: the default)
                continue
            if name != args.backend:
                raise UserError(f"{flag}: only with --backend {name}")
            options[key] = value
    cells = getattr(args, "cells_per_gpu", None)
    if cells is not None:
        check_cells_per_gpu(cells, getattr(args, "accelerator", None))
        if getattr(args, "workers", None) is not None:
            raise UserError("--cells-per-gpu sets the number of workers (N per GPU): "
                            "leave out --workers")  # fmt: skip
        options["cells_per_gpu"] = cells
    return options


def check_cells_per_gpu(cells_per_gpu: Any, accelerator: str | None = None) -> None:
    """None (the option not given), or an integer >= 1; more than one cell per GPU with
    accelerator cpu is a mistake: there is no GPU to share."""
    if cells_per_gpu is None:
        return
    if isinstance(cells_per_gpu, bool) or not isinstance(cells_per_gpu, int) or cells_per_gpu < 1:
        raise UserError(f"--cells-per-gpu {cells_per_gpu!r}: must be an integer >= 1")
    if cells_per_gpu > 1 and accelerator == "cpu":
        raise UserError(
            f"--cells-per-gpu {cells_per_gpu}: needs GPUs, but --accelerator is cpu "
            "(use --workers to run cells side by side on the CPU)"
        )


def check(name: str, tracking_uri: str, options: dict[str, Any], accelerator: str = "auto") -> None:
    backend(name).check(tracking_uri, accelerator, **options)


def make_pool(
    name: str,
    workers: int | None,
    accelerator: str,
    tracking_uri: str,
    options: dict[str, Any] | None = None,
) -> Pool:
    return backend(name).make_pool(workers, accelerator, tracking_uri, **(options or {}))


def workers_here(name: str, workers: int | None, options: dict[str, Any]) -> int | None:
    return backend(name).workers_here(workers, **options)
