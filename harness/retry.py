"""Bounded retries for the launcher's calls to an MLflow tracking server that goes away.

MLflow's HTTP client, left to itself, retries an unreachable server for minutes per call
(MLFLOW_HTTP_REQUEST_MAX_RETRIES=7 with backoff factor 2, and up to 120 s per attempt), and
a grid makes thousands of calls: a server that dies would hang the grid for hours. Instead,
`RetryingClient` gives each of the launcher's calls one deadline (HARNESS_TRACKING_DEADLINE
seconds, 60 by default). Within it MLflow is told not to retry and to wait no longer than
the time left; this module retries transport errors (connection refused or reset, timeout,
5xx answers such as a proxy's 502/503) with a short backoff. A server that comes back in
time costs the grid nothing but the wait; one that does not raises `TrackingUnreachable`,
and the launcher stops the grid with one line (harness.launch).

Retrying a call whose first attempt reached the server is safe for what the launcher
writes: MLflow's SQL store keeps one metric point per (run, key, step, timestamp, value)
and skips a repeated one (SqlAlchemyStore._log_metrics: its primary key), a param may be
logged again with the same value, tags and artifacts are overwritten, set_terminated sets a
status. The one call that is not idempotent is create_run: a create whose answer was lost
leaves an extra RUNNING run with no metrics; the next launch marks it KILLED like any run
left RUNNING, and the cell still has exactly one FINISHED run.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from harness.errors import UserError

DEADLINE_ENV = "HARNESS_TRACKING_DEADLINE"
DEFAULT_DEADLINE = 60.0  # seconds one call may keep failing before the grid stops
FIRST_PAUSE, MAX_PAUSE = 0.25, 2.0  # seconds between attempts: doubling, capped
# Read by MLflow at every HTTP request (mlflow/environment_variables.py, utils/rest_utils.py).
MLFLOW_RETRIES, MLFLOW_TIMEOUT = "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"


class TrackingUnreachable(UserError):
    """The tracking server did not answer one call within the deadline."""

    def __init__(self, uri: str, deadline: float) -> None:
        super().__init__(f"tracking server {uri} unreachable for {deadline:g} s")


def tracking_deadline() -> float:
    """Seconds from HARNESS_TRACKING_DEADLINE, else 60."""
    raw = os.environ.get(DEADLINE_ENV, "").strip()
    if not raw:
        return DEFAULT_DEADLINE
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not seconds > 0 or math.isinf(seconds):
        raise UserError(f"{DEADLINE_ENV}={raw!r}: must be a number of seconds > 0")
    return seconds


class RetryingClient:
    """An MlflowClient whose every method retries transport errors until a deadline.

    Attributes that are not methods (`tracking_uri`) pass through. `warn` receives one line
    when a call starts failing and one when the server answers again.
    """

    def __init__(self, client: Any, deadline: float, warn: Callable[[str], None]) -> None:
        self._client, self._deadline, self._warn = client, deadline, warn

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: self._call(attr, args, kwargs)

    def _call(self, method: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        started = time.monotonic()
        give_up = started + self._deadline
        pause, failed = FIRST_PAUSE, False
        while True:
            try:
                with _mlflow_http(timeout=give_up - time.monotonic()):
                    result = method(*args, **kwargs)
            except Exception as err:
                if not is_transient(err):
                    raise
                left = give_up - time.monotonic()
                if left <= 0:
                    raise TrackingUnreachable(self._client.tracking_uri, self._deadline) from None
                if not failed:
                    failed = True
                    self._warn(
                        f"tracking server {self._client.tracking_uri} unreachable; "
                        f"retrying for up to {self._deadline:g} s"
                    )
                time.sleep(min(pause, left))
                pause = min(2 * pause, MAX_PAUSE)
                continue
            if failed:
                waited = time.monotonic() - started
                uri = self._client.tracking_uri
                self._warn(f"tracking server {uri} answers again after {waited:.0f} s")
            return result


def is_transient(err: BaseException) -> bool:
    """A transport error anywhere in the chain (MLflow wraps requests' errors in its own)."""
    import requests

    transient = (
        requests.ConnectionError,  # refused, reset, the server died mid-answer
        requests.Timeout,
        requests.exceptions.RetryError,  # a 429/5xx answer, with MLflow's retries turned off
        requests.exceptions.ChunkedEncodingError,
    )
    seen: BaseException | None = err
    for _ in range(10):  # chains are short; never loop on a cycle
        if seen is None:
            return False
        if isinstance(seen, transient):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextlib.contextmanager
def _mlflow_http(timeout: float) -> Iterator[None]:
    """For one call: MLflow makes a single attempt of at most `timeout` seconds (at least 1).
    The launcher is MLflow's only user in its process, so the change is seen by no one else;
    Ray actors and workers keep MLflow's own settings."""
    saved = {key: os.environ.get(key) for key in (MLFLOW_RETRIES, MLFLOW_TIMEOUT)}
    os.environ[MLFLOW_RETRIES] = "0"
    os.environ[MLFLOW_TIMEOUT] = str(max(1, math.ceil(timeout)))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
