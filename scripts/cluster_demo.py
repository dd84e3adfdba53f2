"""`make cluster-demo`: a grid on a two-node Ray cluster on this machine, logged to an MLflow
tracking server, then the cells each node trained.

Starts an `mlflow server` (SQLite and artifacts in a temporary folder, on a free port of
127.0.0.1) and a Ray head and worker node (one CPU each, every port on 127.0.0.1; the same
helpers the tests use: tests/mlflow_server.py, tests/ray_cluster.py), runs

    harness run GRID --backend ray --ray-address 127.0.0.1:PORT --tracking-uri http://...

then `harness status GRID` against the server, and stops everything it started, the
temporary folder included, however it ends (Ctrl-C too). It never runs `ray stop`, which
would stop every Ray instance on the machine. Exit code: the grid's.

    python scripts/cluster_demo.py [GRID]     (default: grids/cluster_demo.yaml)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from mlflow_server import MlflowServer  # noqa: E402
from ray_cluster import RayCluster  # noqa: E402


def harness(*argv: str, env: dict[str, str] | None = None) -> int:
    command = [sys.executable, "-m", "harness", *argv]
    return subprocess.run(command, cwd=ROOT, env=os.environ | (env or {})).returncode


def main(grid: str = "grids/cluster_demo.yaml") -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop what was started, too
    folder = Path(tempfile.mkdtemp(prefix="cluster-demo-"))
    server = MlflowServer(f"sqlite:///{folder / 'mlflow.db'}", folder / "artifacts")
    cluster = RayCluster()
    try:
        print(f"starting an MLflow tracking server (store in {folder}) ...", flush=True)
        server.start()
        print(f"  {server.url}")
        print("starting a Ray head node and a worker node, one CPU each ...", flush=True)
        cluster.start()
        for name in ("head", "worker"):
            print(f"  {name:<6} node {cluster.node_tag(name)}")
        print(f"  head at {cluster.address}; every port of both nodes on 127.0.0.1", flush=True)
        uri = ("--tracking-uri", server.url)
        code = harness("run", grid, "--backend", "ray", "--ray-address", cluster.address, *uri,
                       env=cluster.env)  # fmt: skip
        harness("status", grid, *uri)
        return code
    finally:
        print("stopping the Ray nodes and the tracking server (its store was temporary) ...",
              flush=True)  # fmt: skip
        cluster.stop()
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
