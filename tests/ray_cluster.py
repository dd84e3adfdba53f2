"""A real two-node Ray cluster on this machine, for the tests and `make cluster-demo`.

A head node and a worker node, each a `ray start ... --block` process with one CPU, in a
session (and process group) of its own, so that either node can be killed whole. Every port
of both nodes is on 127.0.0.1 and the cluster has a token of its own.

How Ray runs two nodes on one machine (as `ray.cluster_utils.Cluster` does): the worker node
joins the head's session and temp folder (which it reads from the head), its raylet and
plasma sockets get numbered names there, and each node picks free ports (node manager,
object manager, worker ports with `--min-worker-port 0 --max-worker-port 0`); only the
dashboard agent's HTTP port has a fixed default (52365), so each node is given a free one.

Loopback: Ray's servers listen on 127.0.0.1 only when the node's IP is exactly 127.0.0.1,
but on Linux `ray start` turns `--node-ip-address 127.0.0.1` and `--address 127.0.0.1:PORT`
into the machine's network address (`services.resolve_ip_for_localhost`). Ray's local-only
mode (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`) keeps 127.0.0.1 but refuses to start a worker
node. So each node runs Ray's own `ray start` command with that one function made to return
the address as given (`RAY_START`). A client of the cluster (the launcher) runs in
local-only mode (`env`), so that it, too, joins over 127.0.0.1 and finds the raylets there.

Ray 2.5x turns token authentication on where `~/.ray/auth_token` exists; here every process
gets `RAY_AUTH_MODE=token` and a fresh `RAY_AUTH_TOKEN`, so no one's token file is read or
written. Importable from every test folder, like mlflow_server.py.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlflow_server import free_port

STARTUP = 120  # seconds both nodes may take to be up and seen by the head
# `ray start`, with 127.0.0.1 kept as the node's address instead of the machine's
RAY_START = (
    "import sys; from ray._private import services; "
    "services.resolve_ip_for_localhost = lambda host: host; "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()"
)
# A client that asks the head for the nodes: [(node id, is head, alive, CPUs)]
NODES = """
import json, sys, ray
ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False,
         logging_level="WARNING")
print(json.dumps([(n["NodeID"], "node:__internal_head__" in n["Resources"], n["Alive"],
                   n["Resources"].get("CPU", 0)) for n in ray.nodes()]))
"""


@dataclass
class RayCluster:
    """Two Ray nodes of one CPU each on 127.0.0.1: `start`, `kill_worker`, `stop`."""

    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rc", dir="/tmp")))
    port: int = field(default_factory=free_port)  # the head's GCS
    token: str = field(default_factory=lambda: secrets.token_hex(32))
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)  # head, worker
    node_ids: dict[str, str] = field(default_factory=dict)  # head, worker -> Ray node id

    @property
    def address(self) -> str:
        """What `--ray-address` takes."""
        return f"127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The variables a client of this cluster (the launcher) needs: its token, and Ray's
        local-only mode so that it joins over 127.0.0.1."""
        return self._auth | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

    @property
    def _auth(self) -> dict[str, str]:
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def start(self) -> None:
        """The head, then the worker node; returns once the head sees both, alive."""
        self._node("head", "--head", "--port", str(self.port), "--include-dashboard", "false",
                   "--temp-dir", str(self.folder))  # fmt: skip
        deadline = time.monotonic() + STARTUP
        while not _accepts(self.port):
            self._check_running(deadline, "the head's GCS to listen")
            time.sleep(0.2)
        self._node("worker", "--address", self.address)
        while "Ray runtime started." not in (self.folder / "worker.log").read_text():
            self._check_running(deadline, "worker node started")
            time.sleep(0.2)
        while True:
            nodes = self._nodes()
            alive = [(node, head) for node, head, up, cpus in nodes if up and cpus >= 1]
            if len(alive) == 2 and {head for _, head in alive} == {True, False}:
                self.node_ids = {"head" if head else "worker": node for node, head in alive}
                return
            self._check_running(deadline, "two nodes alive")
            time.sleep(1)

    def node_tag(self, which: str) -> str:
        """The harness.node tag of the runs trained on node `which` (head or worker)."""
        return f"{socket.gethostname()}/{self.node_ids[which][:8]}"

    def pids(self, which: str) -> set[int]:
        """Every process of node `which`: its session, Ray's workers included (each Ray
        worker has a process group of its own, in the session of its node)."""
        return _session(self.processes[which].pid)

    def titles(self, which: str) -> dict[int, str]:
        """pid -> command line of each process of node `which`; a Ray worker's is its title:
        `ray::CellWorker.run` while it executes `run`, as `ps` shows it."""
        titles = {}
        for pid in self.pids(which):
            with contextlib.suppress(OSError):
                titles[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        return {pid: title.decode(errors="replace").strip() for pid, title in titles.items()}

    def kill_worker(self) -> None:
        """SIGKILL to the worker node's process group (`ray start`, its raylet, its agents):
        the node is gone at once; its Ray workers find their raylet gone and exit."""
        os.killpg(self.processes["worker"].pid, signal.SIGKILL)
        self.processes["worker"].wait()

    def listening(self) -> set[tuple[str, int]]:
        """(address, port) of every TCP socket the cluster's processes listen on."""
        pids = set().union(*(_session(p.pid) for p in self.processes.values()))
        return {(s[0], s[1]) for held in _sockets(pids, "0A").values() for s in held}

    def stop(self) -> None:
        """Kill both nodes and every process left in their sessions; remove the folder."""
        for process in self.processes.values():
            _kill_session(process)
        shutil.rmtree(self.folder, ignore_errors=True)

    # ---------------------------------------------------------------------------------------
    def _node(self, name: str, *args: str) -> None:
        command = [sys.executable, "-c", RAY_START, "start", *args,
                   "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--block",
                   "--disable-usage-stats", "--min-worker-port", "0", "--max-worker-port", "0",
                   "--dashboard-agent-listen-port", str(free_port())]  # fmt: skip
        with (self.folder / f"{name}.log").open("w") as log:
            self.processes[name] = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=os.environ | self._auth, start_new_session=True,
            )  # fmt: skip

    def _nodes(self) -> list[tuple[str, bool, bool, float]]:
        out = subprocess.run(
            [sys.executable, "-c", NODES, self.address], env=os.environ | self.env,
            capture_output=True, text=True, timeout=STARTUP,
        )  # fmt: skip
        if out.returncode != 0:
            return []
        return [tuple(node) for node in json.loads(out.stdout.strip().splitlines()[-1])]

    def _check_running(self, deadline: float, what: str) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                log = (self.folder / f"{name}.log").read_text()[-2000:]
                raise RuntimeError(f"ray {name} node exited ({process.returncode}):\n{log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"Ray cluster: no {what} within {STARTUP} s")


# --------------------------------------------------------------------------- processes


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _stat(pid: str) -> list[str]:
    """/proc/PID/stat's fields after the command name: state, ppid, pgrp, session, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _session(sid: int) -> set[int]:
    """The live processes of session `sid` (zombies count as gone)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = _stat(entry.name)
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def _kill_session(process: subprocess.Popen) -> None:
    """SIGKILL to the process group started with the session, then to each process still in
    the session (Ray's workers, in groups of their own), until none is left."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    deadline = time.monotonic() + 30
    while (left := _session(process.pid)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def _sockets(pids: set[int], state: str) -> dict[int, set[tuple[str, int, tuple[str, int]]]]:
    """Per pid of `pids`, its TCP sockets in `state` ("0A" LISTEN, "01" ESTABLISHED, as
    /proc/net/tcp writes them): (local address, local port, (remote address, remote port))."""
    table: dict[str, tuple[str, int, tuple[str, int]]] = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(name).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == state:
                local, remote = _endpoint(fields[1]), _endpoint(fields[2])
                table[f"socket:[{fields[9]}]"] = (*local, remote)
    found = {}
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:  # gone
            continue
        found[pid] = {table[link] for link in links if link in table}
    return found


def _endpoint(text: str) -> tuple[str, int]:
    """'0100007F:1F90' -> ('127.0.0.1', 8080); addresses are 32-bit words in host order."""
    hex_ip, hex_port = text.split(":")
    raw = b"".join(bytes.fromhex(hex_ip[i : i + 8])[::-1] for i in range(0, len(hex_ip), 8))
    address = ipaddress.ip_address(raw)
    return str(getattr(address, "ipv4_mapped", None) or address), int(hex_port, 16)


def connected(pids: set[int], port: int) -> set[int]:
    """Which of `pids` hold an open TCP connection to 127.0.0.1:`port`."""
    sockets = _sockets(pids, "01")
    return {pid for pid, held in sockets.items() if ("127.0.0.1", port) in {s[2] for s in held}}
