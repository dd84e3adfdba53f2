"""A real PostgreSQL server on 127.0.0.1, in a temporary data folder, for the tests (and the
benchmark) that use PostgreSQL as MLflow's store.

Nothing is installed here: the server's programs come from the system package (`make
setup-services`, which `.ci/run` calls, installs Debian's `postgresql`). Without them the
tests that need a server are skipped with that advice, unless HARNESS_REQUIRE_SERVICES=1
(set by `.ci/run`) makes a missing server a failure, so CI cannot skip them silently.

PostgreSQL refuses to run as root; run as root, the server runs as the `postgres` user the
package creates (through `setpriv`, which execs, so the process started is the server
itself), in a folder that user owns. Durability is switched off (`fsync`,
`synchronous_commit`, `full_page_writes`): the data folder is thrown away after the test,
and a crash of the *server process* (what the tests do) loses nothing that was committed,
as PostgreSQL writes every commit to the operating system before answering.

Importable from every test folder and from benchmarks/: pytest puts tests/ on sys.path for
tests/conftest.py; the benchmark adds it itself.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlflow_server import free_port

REQUIRE = "HARNESS_REQUIRE_SERVICES"  # "1": a missing PostgreSQL fails instead of skipping
USER = "harness"  # the database superuser the tests connect as (trust auth, loopback only)
STARTUP = 30  # seconds the server may take to accept connections
SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",  # MLflow's server keeps a pool per worker process
}


def bindir() -> Path | None:
    """Where `postgres` and `initdb` are: PG_BINDIR, else PATH, else Debian's versioned
    folder (/usr/lib/postgresql/<version>/bin, not on PATH), the newest first."""
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    on_path = shutil.which("postgres")
    if on_path:
        return Path(on_path).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(Path(p).parts[-3]))  # fmt: skip
    return Path(found[-1]).parent if found else None


def missing() -> str | None:
    """Why no server can be started here, or None."""
    if bindir() is None:
        return "PostgreSQL is not installed (make setup-services)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the psycopg driver is not installed (the `postgres` extra: make setup)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run the server as"
    return None


def _as_server_user() -> list[str]:
    """The prefix that runs a command as the `postgres` user when this process is root."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--reuid", "postgres", "--regid", "postgres", "--init-groups", "--"]


@dataclass
class Postgres:
    """One server: `start`, `create_database`, `stop`. Its data folder is its own."""

    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="harness-pg-")))
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def uri(self, database: str) -> str:
        """The store URI MLflow takes: SQLAlchemy 2.1 opens `postgresql://` with psycopg 3."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        bin_ = bindir()
        assert bin_ is not None, missing()
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.folder, user.pw_uid, user.pw_gid)
        if not self.data.exists():
            subprocess.run(
                [*_as_server_user(), str(bin_ / "initdb"), "-D", str(self.data), "-U", USER,
                 "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
        settings = [arg for key, value in SETTINGS.items() for arg in ("-c", f"{key}={value}")]
        with (self.folder / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                [*_as_server_user(), str(bin_ / "postgres"), "-D", str(self.data),
                 "-h", "127.0.0.1", "-p", str(self.port), "-k", str(self.folder), *settings],
                stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        self._wait_ready()

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + STARTUP
        while True:
            assert self.process is not None and self.process.poll() is None, self.log()
            try:
                psycopg.connect(self.uri("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"PostgreSQL did not start: {self.log()}") from None
                time.sleep(0.1)

    def execute(self, sql: str) -> None:
        """One statement outside a transaction (CREATE DATABASE cannot run inside one)."""
        import psycopg

        with psycopg.connect(self.uri("postgres"), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def create_database(self, name: str, template: str | None = None) -> str:
        """A new database (a copy of `template` if given); returns its store URI."""
        copy = f" TEMPLATE {template}" if template else ""
        self.execute(f"CREATE DATABASE {name}{copy}")
        return self.uri(name)

    def log(self) -> str:
        path = self.folder / "server.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def stop(self) -> None:
        """Fast shutdown (SIGINT: roll back, close, exit), then the folder is removed."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)
