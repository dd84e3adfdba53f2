"""attention-harness: compare attention kinds and optimizers across tasks, tracked in MLflow.

The Python API (harness.api) is imported on first use, so `import harness` and `harness --help`
stay fast: `harness.run_grid`, `harness.load_runs`, `harness.results`, `harness.export`, and
`harness.report(experiment, out=...)`, which is the `harness.report` package called.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
_API = ("run_grid", "load_runs", "results", "export")

if TYPE_CHECKING:
    from harness.api import export, load_runs, results, run_grid

__all__ = ["__version__", "export", "load_runs", "report", "results", "run_grid"]


def __getattr__(name: str) -> Any:
    """PEP 562: the API's functions, and the report package, imported when first asked for."""
    if name in _API:
        return getattr(importlib.import_module("harness.api"), name)
    if name == "report":
        return importlib.import_module("harness.report")
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
