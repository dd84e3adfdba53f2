"""MLflow's usage telemetry: off in the harness's processes unless the user chose otherwise.

MLflow 3.17 sends usage events to its makers unless `MLFLOW_DISABLE_TELEMETRY` is true or
`DO_NOT_TRACK` is true (mlflow/telemetry/utils.py, `is_telemetry_disabled`). Its client is
made when `mlflow` is first imported, and the UI server answers the UI's telemetry requests
by the same rule, so the variable is set before any import of MLflow and is inherited by the
processes the harness starts (workers, the UI server). A user who set either variable,
to any value, has chosen: it is left as it is.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

DISABLE = "MLFLOW_DISABLE_TELEMETRY"
CHOICES = (DISABLE, "DO_NOT_TRACK")  # the variables MLflow reads


def off_unless_chosen(environ: MutableMapping[str, str] | None = None) -> None:
    """MLFLOW_DISABLE_TELEMETRY=true in `environ` (this process's by default) unless the user
    set it or DO_NOT_TRACK."""
    environ = os.environ if environ is None else environ
    if not any(environ.get(name) for name in CHOICES):
        environ[DISABLE] = "true"
