"""MLflow's usage telemetry: off in the harness's processes unless the user chose otherwise;
and no run links printed by MLflow's client.

MLflow 3.17 sends usage events to its makers unless `MLFLOW_DISABLE_TELEMETRY` is true or
`DO_NOT_TRACK` is true (mlflow/telemetry/utils.py, `is_telemetry_disabled`). Its client is
made when `mlflow` is first imported, and the UI server answers the UI's telemetry requests
by the same rule, so the variable is set before any import of MLflow and is inherited by the
processes the harness starts (workers, the UI server). A user who set either variable,
to any value, has chosen: it is left as it is.

With a tracking server, MLflow's `set_terminated` first fetches the run (one more request
per cell) to print "View run ... at: URL" on stdout, unless
`MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT` is true (mlflow/tracking/_tracking_service/client.py,
`_log_url`). The harness prints its own links (`harness ui`), so it sets that variable too,
again unless the user set it.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

DISABLE = "MLFLOW_DISABLE_TELEMETRY"
CHOICES = (DISABLE, "DO_NOT_TRACK")  # the variables MLflow reads
NO_RUN_LINKS = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


def off_unless_chosen(environ: MutableMapping[str, str] | None = None) -> None:
    """MLFLOW_DISABLE_TELEMETRY=true in `environ` (this process's by default) unless the user
    set it or DO_NOT_TRACK; MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT=true unless the user set
    it."""
    environ = os.environ if environ is None else environ
    if not any(environ.get(name) for name in CHOICES):
        environ[DISABLE] = "true"
    environ.setdefault(NO_RUN_LINKS, "true")
