"""Backends that run grid cells: `local` (worker processes on this machine) and `ray` (actors
on a local Ray instance or a Ray cluster). Both offer the same small pool interface to the
launcher: `idle`, `submit(job)`, `poll(timeout)` and `shutdown(kill)`."""

from __future__ import annotations

from typing import Any

BACKENDS = ("local", "ray")


def make_pool(
    backend: str, workers: int, accelerator: str, tracking_uri: str, ray_address: str | None
) -> Any:
    if backend == "ray":
        from harness.backends.ray import RayPool

        return RayPool(workers, accelerator, ray_address, tracking_uri)
    from harness.backends.local import LocalPool

    return LocalPool(workers, accelerator)
