"""Security review, one test per point:

- servers the harness starts listen on loopback only: `harness ui` (unless --host says
  otherwise) and the Ray instance `--backend ray` starts on this machine;
- untrusted files are never unpickled and YAML is read with the safe loader (a check over the
  source of harness/ and tasks/);
- every string that comes from MLflow is shown as text in the HTML and the PDF (run names,
  params and error tags: tests/test_report.py::test_a_run_named_like_markup_is_shown_as_text;
  here the experiment name, the grid tag and a sweep value, which the title and the tables show);
- no name can make the harness write outside its output folder: grid `name:` and
  `--experiment` are refused (tests/faults/test_bad_input.py, tests/test_spec.py
  ::test_bad_names_are_refused), and here `harness report` of an experiment named like a path
  (made by another tool) and a task named like a path stay inside reports/.
"""

from __future__ import annotations

import ast
import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _reports import make_experiment, report_files
from mlflow import MlflowClient
from mlflow_server import free_port
from pypdf import PdfReader

from harness.cli import main
from harness.report import build_report

ROOT = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------- listening sockets


def _tree(root: int) -> set[int]:
    """`root` and every process below it (from /proc/PID/stat's parent field)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit():
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, grew = {root}, True
    while grew:
        below = {pid for pid, parent in parents.items() if parent in found} - found
        found |= below
        grew = bool(below)
    return found


def _address(hex_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net/tcp{,6} writes addresses as 32-bit words in host (little-endian) order."""
    raw = b"".join(bytes.fromhex(hex_ip[i : i + 8])[::-1] for i in range(0, len(hex_ip), 8))
    address = ipaddress.ip_address(raw)
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def _listening(pids: set[int]) -> set[tuple[int, str, int]]:
    """(pid, address, port) of every TCP socket in LISTEN state that one of `pids` holds."""
    sockets: dict[str, tuple[str, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                hex_ip, hex_port = fields[1].split(":")
                sockets[fields[9]] = (str(_address(hex_ip)), int(hex_port, 16))
    found = set()
    for pid in pids:
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:  # gone, or not ours to read
            continue
        for link in links:
            inode = link.removeprefix("socket:[").removesuffix("]")
            if link.startswith("socket:[") and inode in sockets:
                found.add((pid, *sockets[inode]))
    return found


def _not_loopback(listening: set[tuple[int, str, int]]) -> list[tuple[int, str, int]]:
    return sorted(s for s in listening if not ipaddress.ip_address(s[1]).is_loopback)


@pytest.mark.slow  # 15-40 s on 2 cores: `make test-slow` (CI runs both suites)
def test_harness_ui_listens_on_loopback_only(tracking_uri: str, tmp_path: Path) -> None:
    """Every socket the UI's processes listen on (MLflow's server and its workers) is on
    127.0.0.1; tests/test_scaling.py checks the UI answers there and stops on Ctrl-C."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "harness",
        "ui",
        "--port",
        str(port),
        "--tracking-uri",
        tracking_uri,
    ]
    ui = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while not any(p == port for _, _, p in _listening(_tree(ui.pid))):
            assert ui.poll() is None and time.monotonic() < deadline, "the UI never listened"
            time.sleep(0.2)
        listening = _listening(_tree(ui.pid))
    finally:
        ui.send_signal(signal.SIGINT)
        ui.wait(timeout=30)
    assert {(address, p) for _, address, p in listening if p == port} == {("127.0.0.1", port)}
    assert _not_loopback(listening) == []


def test_a_local_ray_instance_listens_on_loopback_only(tracking_uri: str) -> None:
    """`--backend ray` without `--ray-address` starts Ray here: its GCS, raylet, object
    manager and workers would listen on every interface; they must listen on 127.0.0.1."""
    ray = pytest.importorskip("ray", reason="the `ray` extra (make test installs it)")
    from ray._private import ray_constants

    from harness.backends.ray import RayPool

    assert not ray.is_initialized()
    cluster_mode = ray_constants.ENABLE_RAY_CLUSTER
    before = _listening(_tree(os.getpid()))
    pool = RayPool(1, "cpu", None, tracking_uri)
    try:
        assert pool.queue is not None and pool.queue.empty()  # its actor is up and answering
        listening = _listening(_tree(os.getpid())) - before
        node_ip = ray.util.get_node_ip_address()
    finally:
        pool.shutdown(kill=True)
    assert len({pid for pid, _, _ in listening}) >= 3  # at least the driver, GCS and raylet
    assert _not_loopback(listening) == []
    assert node_ip == "127.0.0.1"
    assert ray_constants.ENABLE_RAY_CLUSTER is cluster_mode  # Ray's own setting, restored


# --------------------------------------------------------------------------- safe loading

# Calls that run code from the data they read (or may): never on a file a user hands over.
UNSAFE = {
    "yaml.load",
    "yaml.load_all",
    "yaml.unsafe_load",
    "yaml.unsafe_load_all",
    "yaml.full_load",
    "yaml.full_load_all",
    "pickle.load",
    "pickle.loads",
    "cloudpickle.load",
    "cloudpickle.loads",
    "dill.load",
    "dill.loads",
    "pandas.read_pickle",
    "marshal.load",
    "marshal.loads",
    "shelve.open",
    "joblib.load",
}


def unsafe_calls(source: str) -> list[str]:
    """Each call in `source` of UNSAFE, of torch.load without weights_only=True, or of
    numpy.load with allow_pickle=True, as "line: name"; imports under other names are seen."""
    tree = ast.parse(source)
    names: dict[str, str] = {}  # local name -> dotted name it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                names[alias.asname or top] = alias.name if alias.asname else top
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        dotted = _dotted(node.func, names)
        keywords = {k.arg: k.value for k in node.keywords}
        safe_torch = _is_true(keywords.get("weights_only"))
        if (
            dotted in UNSAFE
            or (dotted == "torch.load" and not safe_torch)
            or (dotted == "numpy.load" and _is_true(keywords.get("allow_pickle")))
        ):
            found.append(f"{node.lineno}: {dotted}")
    return found


def _dotted(func: ast.expr, names: dict[str, str]) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        return ""
    return ".".join([names.get(func.id, func.id), *reversed(parts)])


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def test_the_check_sees_unsafe_loads_under_any_name() -> None:
    source = """
import pickle as pk, yaml, torch
import pandas as pd
from yaml import full_load
from torch import load as tload
pk.loads(b"")
yaml.load(text, Loader=yaml.FullLoader)
full_load(text)
pd.read_pickle(path)
torch.load(path)
tload(path, weights_only=False)
torch.load(path, weights_only=True)
yaml.safe_load(text)
"""
    assert unsafe_calls(source) == [
        "6: pickle.loads",
        "7: yaml.load",
        "8: yaml.full_load",
        "9: pandas.read_pickle",
        "10: torch.load",
        "11: torch.load",
    ]


def test_no_unsafe_load_in_the_harness_or_the_tasks() -> None:
    files = sorted([*ROOT.glob("harness/**/*.py"), *ROOT.glob("tasks/**/*.py")])
    assert len(files) > 20
    found = [f"{p.relative_to(ROOT)}:{hit}" for p in files for hit in unsafe_calls(p.read_text())]
    assert found == []


# --------------------------------------------------------------------------- escaping


def test_experiment_grid_and_sweep_names_are_shown_as_text(
    client: MlflowClient, tmp_path: Path
) -> None:
    experiment = 'exp<i id="e">1</i>'
    grid = "<script>alert('grid')</script>"
    sweep = {"task.length": "<b>8</b>"}
    make_experiment(client, experiment, grid=grid, sweep=sweep)
    out = tmp_path / "out"
    build_report(client, experiment, out)
    html = (out / "report.html").read_text()
    for markup in (experiment, grid, "<b>8</b>", "<i id="):
        assert markup not in html
    assert "exp&lt;i id=&#34;e&#34;&gt;1&lt;/i&gt;" in html  # the title and the title page
    assert "&lt;script&gt;alert(&#39;grid&#39;)&lt;/script&gt;" in html
    assert "task.length=&lt;b&gt;8&lt;/b&gt;" in html
    assert (out / "figures" / "sweep-copy-task.length.png").is_file()  # drawn from the sweep
    text = "\n".join(page.extract_text() for page in PdfReader(out / "report.pdf").pages)
    assert experiment in text and grid in text and "<b>8</b>" in text


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("name", "folder"),
    [("../../x", "_.._x"), ("/tmp/abs", "_tmp_abs"), ("..", "experiment"), ("a/../b", "a_.._b")],
)
def test_report_of_an_experiment_named_like_a_path_writes_inside_reports(
    tracking_uri: str, client: MlflowClient, tmp_path: Path, monkeypatch, name: str, folder: str
) -> None:
    """MLflow takes any experiment name (another tool may have made it): the default report
    folder is reports/<name as one safe folder name>, never a path out of reports/."""
    make_experiment(client, name)
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    before = report_files(tmp_path)
    assert (
        main(["report", name, "--tracking-uri", tracking_uri, "--format", "html", "--no-progress"])
        == 0
    )
    new = {Path(p) for p in report_files(tmp_path) - before if (tmp_path / p).is_file()}
    assert new and all(p.parts[:3] == ("a", "b", "reports") for p in new), new
    assert (work / "reports" / folder / "report.html").is_file()
    assert not Path("/tmp/abs").exists()


def test_a_task_named_like_a_path_gives_figure_files_inside_the_report(
    client: MlflowClient, tmp_path: Path
) -> None:
    """Figure file names come from task names in MLflow: they are made safe."""
    make_experiment(client, "exp", task="../../../evil")
    before = report_files(tmp_path)
    out = tmp_path / "deep" / "er" / "out"
    build_report(client, "exp", out, formats=("html",))
    new = {Path(p) for p in report_files(tmp_path) - before if (tmp_path / p).is_file()}
    assert new and all(p.parts[:3] == ("deep", "er", "out") for p in new), new
    assert any("evil" in p.name for p in (out / "figures").iterdir())
