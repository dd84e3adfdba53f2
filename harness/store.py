"""Where runs are stored: the tracking URI, resolved and checked before anything is created.

Kept free of torch and Lightning so that light commands (`harness ui`, `harness report`,
`harness status`) start quickly.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from harness.errors import UserError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
EXPERIMENT_VARIABLE = "MLFLOW_EXPERIMENT_NAME"
CONNECT_TIMEOUT = 5.0  # seconds to wait for a tracking server's first answer


def resolve_tracking_uri(uri: str | None = None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else ./mlflow.db (MLflow's own default)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def resolve_experiment(flag: str | None, default: str) -> str:
    """--experiment, else MLFLOW_EXPERIMENT_NAME (MLflow's variable), else `default`; a name
    given either way obeys the rule of a grid's `name:`."""
    from harness.spec import check_experiment_name

    if flag is not None:
        return check_experiment_name(flag)
    name = os.environ.get(EXPERIMENT_VARIABLE)
    return check_experiment_name(name, EXPERIMENT_VARIABLE) if name else default


def absolute_uri(uri: str) -> str:
    """A SQLite URI with a relative path made absolute (sqlite:///mlflow.db ->
    sqlite:////work/mlflow.db); any other URI as it is. MLflow keeps one store per URI for the
    life of a process, so a relative one would go on naming the first folder it was used in
    after the working folder changes (a notebook's `os.chdir`)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


def check_tracking_uri(uri: str, timeout: float = CONNECT_TIMEOUT, existing: bool = False) -> None:
    """Fail early, with the address, on a store that cannot be opened: before any run exists,
    and for a tracking server within `timeout` seconds (MLflow's own client retries an
    unreachable server for minutes).

    `existing`: the command only reads (report, status), so a SQLite file that is not there
    is an error rather than a new, empty store left behind."""
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        path = Path(uri[len(prefix) :])
        if not path.parent.is_dir():
            raise UserError(f"tracking URI {uri}: folder {path.parent} does not exist")
        if existing and not path.is_file():
            raise UserError(f"tracking URI {uri}: no store at {path} (nothing was run with it)")
    elif is_http(uri):
        _check_server(uri, timeout)
    elif is_postgres(uri):
        _check_postgres(uri, timeout)


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def is_postgres(uri: str) -> bool:
    """`postgresql://` or with a driver named (`postgresql+psycopg://`)."""
    return uri.startswith(("postgresql://", "postgresql+"))


def _check_postgres(uri: str, timeout: float) -> None:
    """One connection: is the driver installed, and does the database answer? The URI is
    named without its password."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    try:
        shown = make_url(uri).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        raise UserError("tracking URI: not a valid postgresql:// URI") from None
    try:
        engine = sqlalchemy.create_engine(
            uri, connect_args={"connect_timeout": max(1, int(timeout))}
        )
    except ImportError as err:  # the driver the URI names (psycopg 3 for plain postgresql://)
        raise UserError(
            f"tracking URI {shown}: its driver is not installed ({err}; for postgresql:// "
            "pip install 'attention-harness[postgres]')"
        ) from None
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.SQLAlchemyError as err:
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()
        raise UserError(
            f"tracking URI {shown}: cannot connect ({reason[0] if reason else type(err).__name__})"
        ) from None
    finally:
        engine.dispose()


def _check_server(uri: str, timeout: float) -> None:
    """One request to the server's REST API: is it there, and is it an MLflow server?"""
    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    request = urllib.request.Request(url, headers=_auth_headers())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            json.load(response)
    except urllib.error.HTTPError as err:
        raise UserError(f"tracking server {uri}: answered HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(f"tracking server {uri}: unreachable ({reason})") from None
    except ValueError:
        raise UserError(f"tracking server {uri}: does not answer like an MLflow server") from None


def _auth_headers() -> dict[str, str]:
    """MLflow's own credentials variables, so the check passes where the client would."""
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = (os.environ.get(f"MLFLOW_TRACKING_{k}") for k in ("USERNAME", "PASSWORD"))
    if user and password:
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {basic}"}
    return {}
