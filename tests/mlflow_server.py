"""A real `mlflow server` process on 127.0.0.1 for the tests where HTTP matters.

Importable from every test folder: pytest puts tests/ on sys.path for tests/conftest.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

STARTUP = 90  # seconds a server may take to answer (MLflow migrates a new store first)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def migrate(uri: str, cwd: Path | None = None) -> None:
    """Create MLflow's tables in the empty store at `uri`, in another process (one that opened
    the store would keep connections to it, and PostgreSQL copies only a database nobody is
    connected to, as a template); its Default experiment's artifacts would go under `cwd`."""
    code = "import sys, mlflow; mlflow.MlflowClient(sys.argv[1]).search_experiments()"
    subprocess.run([sys.executable, "-c", code, uri], check=True, capture_output=True, cwd=cwd)


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = STARTUP) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"server exited with {process.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the process group (MLflow starts uvicorn as a child), SIGKILL if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@dataclass
class MlflowServer:
    """`mlflow server` over a store (SQLite or PostgreSQL) with served artifacts; startable
    again on the same port and store after a kill, as an operator would restart it.

    `store` is the backend store's URI, which the tests also open directly, to read what the
    server wrote whether or not it is up."""

    store: str
    artifacts: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    env: dict[str, str] = field(default_factory=dict)  # extra variables for the server
    workers: int = 1  # server processes (MLflow's default is 4)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [sys.executable, "-m", "mlflow", "server",
                   "--backend-store-uri", self.store,
                   "--artifacts-destination", str(self.artifacts),
                   "--host", "127.0.0.1", "--port", str(self.port),
                   "--workers", str(self.workers)]  # fmt: skip
        # No job runner: it starts a handful of extra processes these tests never use.
        quiet = {"MLFLOW_LOGGING_LEVEL": "WARNING", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env = os.environ | quiet | self.env
        self.process = subprocess.Popen(
            command, cwd=self.artifacts.parent, env=env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_http(self.url + "/health", self.process)

    def kill(self) -> None:
        """SIGKILL, the whole process group: no chance to finish a request or close cleanly."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)

    @classmethod
    def over_copy(cls, template: Path, folder: Path) -> MlflowServer:
        """A server (not started) over a copy of a migrated empty store, in `folder`."""
        db = folder / "server.db"
        db.write_bytes(template.read_bytes())
        return cls(f"sqlite:///{db}", folder / "artifacts")
