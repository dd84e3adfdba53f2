"""MLflow's conventions and UI: experiment names from MLFLOW_EXPERIMENT_NAME, MLflow's run
context tags, run names with their sweep point, model-training experiments and the view
`harness ui` opens, telemetry off by default, the report's links to MLflow's comparison of a
row's runs, and `harness ui` stopping every process it started on SIGINT and SIGTERM.

The UI's routes, tags and telemetry switches are those of MLflow 3.17 (harness/ui.py,
harness/telemetry.py say where each was read). A headless browser opening what `harness ui`
prints is `test_the_address_harness_ui_prints_shows_the_grids_runs` (slow; needs Chromium).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from mlflow_server import free_port
from test_report import tables
from test_stats import Run, correct_with, report_html, write_experiment

from harness import schema, ui
from harness.cli import main
from harness.config import resolve
from harness.errors import UserError
from harness.store import resolve_experiment
from harness.telemetry import CHOICES, NO_RUN_LINKS, off_unless_chosen
from harness.tracking import experiment_id, git_commit

# A sweep of two d_k values, one attention kind, one seed, 10 steps: two tiny cells.
SWEEP_GRID = {
    "protocol": "fixed",
    "tasks": [{"name": "copy", "params": {"length": 4, "n_train": 256}}],
    "attention": ["scaled_dot"],
    "optimizers": [{"name": "adam", "lr": 0.003}],
    "seeds": [1],
    "model": {"d_model": 16, "d_ff": 32, "n_layers": 1},
    "train": {"batch_size": 32},
    "budget": {"steps": 10, "val_every": 10},
    "sweep": {"model.d_k": [8, 16]},
}
SWEEP_NAMES = [f"copy/scaled_dot/adam/lr=0.003/d_k={d}/seed=1" for d in (16, 8)]
TELEMETRY = ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")


def write_grid(folder: Path, name: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **SWEEP_GRID}))
    return path


# --------------------------------------------------------------------------- names


def test_a_run_name_carries_its_sweep_point() -> None:
    cfg = resolve("copy", "dot", "adam", lr=0.003, seed=1)
    assert cfg.run_name == "copy/dot/adam/lr=0.003/seed=1"
    assert cfg.run_name_at({"model.d_k": 128}) == "copy/dot/adam/lr=0.003/d_k=128/seed=1"
    two = {"task.length": 8, "model.d_k": 0.5}  # in key order, floats as lr is
    assert cfg.run_name_at(two) == "copy/dot/adam/lr=0.003/d_k=0.5/length=8/seed=1"
    clash = {"model.dropout": 0.1, "attention.dropout": 0.2}  # one short name, two keys
    assert cfg.run_name_at(clash) == (
        "copy/dot/adam/lr=0.003/attention.dropout=0.2/model.dropout=0.1/seed=1"
    )


def test_the_experiment_name_is_the_flag_else_the_variable_else_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    assert resolve_experiment(None, "train") == "train"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from_env")
    assert resolve_experiment(None, "train") == "from_env"
    assert resolve_experiment("flag", "train") == "flag"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "no spaces")
    with pytest.raises(UserError, match=r"^MLFLOW_EXPERIMENT_NAME 'no spaces': must be"):
        resolve_experiment(None, "train")
    assert resolve_experiment("flag", "train") == "flag"  # the flag wins, unchecked variable


def test_a_bad_experiment_variable_stops_a_launch_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "../escape")
    assert main(["run", str(write_grid(tmp_path, "g")), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: MLFLOW_EXPERIMENT_NAME '../escape': ") and "\n" not in err


def test_experiments_are_marked_as_model_training_unless_someone_chose_a_kind(
    client: MlflowClient,
) -> None:
    made = experiment_id(client, "new")
    older = client.create_experiment("older")  # made before the harness marked experiments
    chosen = client.create_experiment("chosen", tags={schema.EXPERIMENT_KIND: "genai_development"})
    assert experiment_id(client, "older") == older and experiment_id(client, "chosen") == chosen
    kinds = {e: client.get_experiment(e).tags.get(schema.EXPERIMENT_KIND) for e in (made, older)}
    assert kinds == {made: "custom_model_development", older: "custom_model_development"}
    assert client.get_experiment(chosen).tags[schema.EXPERIMENT_KIND] == "genai_development"


# --------------------------------------------------------------------------- a real launch


def test_a_launch_follows_mlflows_conventions(
    tracking_uri: str, client: MlflowClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLFLOW_EXPERIMENT_NAME picks the experiment; it is marked as model training and holds
    the view `harness ui` opens; every run has MLflow's context tags; names carry the sweep."""
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from_env")
    path = write_grid(tmp_path, "swept")
    assert main(["run", str(path), "--tracking-uri", tracking_uri, "--workers", "1",
                 "--no-progress"]) == 0  # fmt: skip
    assert client.get_experiment_by_name("swept") is None
    exp = client.get_experiment_by_name("from_env")
    assert exp.tags[schema.EXPERIMENT_KIND] == "custom_model_development"
    view = json.loads(exp.tags[ui.VIEW_TAG])
    assert view["selectedColumns"] == [
        "params.`task`", "params.`attention`", "params.`optimizer`", "params.`model.d_k`",
        "params.`lr`", "params.`seed`", "metrics.`test/acc`", "metrics.`val/acc`",
    ]  # fmt: skip
    assert [k["groupByData"] for k in view["groupBy"]["groupByKeys"]] == [
        "task", "attention", "optimizer", "model.d_k",
    ]  # fmt: skip
    assert view["searchFilter"] == "params.phase = 'final'"
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted([*SWEEP_NAMES, "swept"])
    for run in runs:
        tags = run.data.tags
        assert tags["mlflow.user"] and tags["mlflow.source.type"] == "LOCAL", run.info.run_name
        assert tags["mlflow.source.name"] == sys.argv[0], run.info.run_name
        assert tags.get(schema.MLFLOW_GIT_COMMIT) == git_commit(), run.info.run_name
    final = client.search_runs([exp.experiment_id], view["searchFilter"])  # MLflow's own search
    assert sorted(r.info.run_name for r in final) == sorted(SWEEP_NAMES)


# --------------------------------------------------------------------------- the report


def test_each_results_row_links_to_mlflows_comparison_of_its_runs(
    client: MlflowClient, tmp_path: Path
) -> None:
    runs = [Run(kind, "adam", s, correct_with(60 + 5 * s, s)) for kind in ("dot", "multihead")
            for s in (1, 2, 3)]  # fmt: skip
    write_experiment(client, "links", runs)
    html = report_html(client, "links", tmp_path)
    exp = client.get_experiment_by_name("links")
    expected = {}
    for run in client.search_runs([exp.experiment_id], schema.CELL_RUNS):
        expected.setdefault(run.data.params["attention"], set()).add(run.info.run_id)
    (rows,) = tables(html, "results")
    section = html.split('id="results"')[1].split('id="figures"')[0]
    links = re.findall(r'<tr[^>]*>\s*<td>(\w+)</td>.*?<a href="([^"]+)"', section, re.S)
    assert [attention for attention, _ in links] == [r["attention"] for r in rows]
    for attention, href in links:
        base, _, fragment = href.replace("&amp;", "&").partition("#")
        route, _, query = fragment.partition("?")
        params = urllib.parse.parse_qs(query)
        assert (base, route) == ("http://127.0.0.1:5000/", "/compare-runs")
        assert json.loads(params["experiments"][0]) == [exp.experiment_id]
        assert set(json.loads(params["runs"][0])) == expected[attention]


# --------------------------------------------------------------------------- telemetry


def test_telemetry_is_off_unless_the_user_chose() -> None:
    environ: dict[str, str] = {}
    off_unless_chosen(environ)
    assert environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    for chosen in ({"MLFLOW_DISABLE_TELEMETRY": "false"}, {"DO_NOT_TRACK": "false"}):
        environ = dict(chosen)
        off_unless_chosen(environ)
        assert {k: environ.get(k) for k in CHOICES} == {k: chosen.get(k) for k in CHOICES}


def test_mlflow_prints_no_run_links_unless_the_user_asked() -> None:
    """Against a tracking server MLflow's client fetches each run it ends to print a link on
    stdout; the harness's processes do not, unless the user set the variable."""
    environ: dict[str, str] = {}
    off_unless_chosen(environ)
    assert environ[NO_RUN_LINKS] == "true"
    environ = {NO_RUN_LINKS: "false"}
    off_unless_chosen(environ)
    assert environ[NO_RUN_LINKS] == "false"


def test_the_command_line_turns_telemetry_off_before_mlflow_is_imported(tmp_path: Path) -> None:
    """MLflow makes its telemetry client when it is first imported: the variable must be set
    by then, so the module the console script loads must not import MLflow itself."""
    code = (
        "import os, sys\n"
        "from harness.cli import main\n"
        "assert 'mlflow' not in sys.modules\n"
        "main(['ui', '--port', '0'])\n"  # exits 2 at once: the port is checked first
        "print(os.environ.get('MLFLOW_DISABLE_TELEMETRY'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in TELEMETRY}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "true"


# --------------------------------------------------------------------------- harness ui


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, session id, state) of every process (Linux /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            found[int(entry.name)] = (int(fields[1]), int(fields[3]), fields[0])
    return found


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().partition("=")[::2] for item in raw if item)


@pytest.mark.slow  # 12 s a signal on 2 cores: `make test-slow` (CI runs both suites)
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
@pytest.mark.parametrize(
    ("signum", "user_env"),
    [(signal.SIGTERM, {}), (signal.SIGINT, {"DO_NOT_TRACK": "false"})],
    ids=["SIGTERM", "SIGINT"],
)
def test_harness_ui_stops_every_process_it_started(
    signum: int, user_env: dict[str, str], tracking_uri: str, tmp_path: Path
) -> None:
    """After the signal it exits 0, nothing listens on the port and no process it started is
    left. The server runs with telemetry off unless the user chose (DO_NOT_TRACK here)."""
    port = free_port()
    command = [sys.executable, "-m", "harness", "ui", "--port", str(port),
               "--tracking-uri", tracking_uri]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in TELEMETRY} | user_env
    harness = subprocess.Popen(command, cwd=tmp_path, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    server = None
    try:
        line = harness.stdout.readline()
        deadline = time.monotonic() + 120
        while not _listening(port):
            assert harness.poll() is None, harness.stderr.read()
            assert time.monotonic() < deadline, "the UI never listened"
            time.sleep(0.2)
        table = _processes()
        (server,) = [pid for pid, (parent, _, _) in table.items() if parent == harness.pid]
        started = {pid for pid, (_, session, _) in table.items() if session == server}
        assert len(started) >= 2  # MLflow's command and its uvicorn server, at least
        server_env = _environ(server)
        harness.send_signal(signum)
        code = harness.wait(timeout=30)
        left = [pid for pid in started if _processes().get(pid, (0, 0, "Z"))[2] != "Z"]
        err = harness.stderr.read() if not left else ""  # open while a server process lives
    finally:
        if harness.poll() is None:
            harness.kill()
        if server is not None:  # a failed test leaves nothing listening either
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server, signal.SIGKILL)
    assert left == []
    assert code == 0, err
    assert "Traceback" not in err and "stopped" in err
    assert not _listening(port)
    assert [pid for pid, (_, session, state) in _processes().items()
            if session == server and state != "Z"] == []  # fmt: skip
    assert f": http://127.0.0.1:{port}  (Ctrl-C stops it)" in line
    if user_env:
        assert "MLFLOW_DISABLE_TELEMETRY" not in server_env  # the user chose DO_NOT_TRACK
        assert server_env["DO_NOT_TRACK"] == "false"
    else:
        assert server_env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert server_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_harness_ui_gives_an_experiments_runs_table_in_the_grids_view(
    client: MlflowClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """The address `harness ui EXPERIMENT` prints (the browser test opens it): MLflow 3.17's
    route of the runs table, on the UI's model-training side, in the view a launch recorded."""
    base = "http://127.0.0.1:5000"
    plain = experiment_id(client, "plain")
    grid = experiment_id(client, "grid")
    client.set_experiment_tag(grid, ui.VIEW_TAG, ui.grid_view(["acc"], []))
    runs = f"{base}/#/experiments/{{}}/runs?workflowType=machine_learning"
    assert ui.experiment_address(client, base, "plain") == runs.format(plain)
    assert ui.experiment_address(client, base + "/", "grid") == (
        runs.format(grid) + "&viewStateShareKey=harness"
    )
    port = str(free_port())
    assert main(["ui", "nowhere", "--tracking-uri", client.tracking_uri, "--port", port]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: no experiment 'nowhere' in {client.tracking_uri}"


# --------------------------------------------------------------------------- a browser


def chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "chrome"))), None)


def page_text(url: str) -> str:
    """What a headless Chromium shows at `url` once the page's requests have settled."""
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
               "--window-size=1600,900", "--virtual-time-budget=30000", url]  # fmt: skip
    dom = subprocess.run(command, capture_output=True, text=True, timeout=180).stdout
    return re.sub(r"<[^>]+>", " ", dom)


@pytest.mark.slow  # a real grid, the UI and a browser: `make test-slow`
@pytest.mark.skipif(chromium() is None, reason="needs Chromium (apt-get install chromium)")
def test_the_address_harness_ui_prints_shows_the_grids_runs(
    tracking_uri: str, client: MlflowClient, tmp_path: Path
) -> None:
    path = write_grid(tmp_path, "swept")
    assert main(["run", str(path), "--tracking-uri", tracking_uri, "--no-progress"]) == 0
    port = free_port()
    command = [sys.executable, "-m", "harness", "ui", "swept", "--port", str(port),
               "--tracking-uri", tracking_uri]  # fmt: skip
    harness = subprocess.Popen(command, cwd=tmp_path, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        url = re.search(r"http://\S+", harness.stdout.readline()).group(0)
        deadline = time.monotonic() + 120
        while not _listening(port):
            assert harness.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        text = page_text(url)
        assert "Model training" in text and "shared view" in text
        for name in SWEEP_NAMES:
            assert name in text
        exp = client.get_experiment_by_name("swept")
        run_ids = [r.info.run_id for r in client.search_runs([exp.experiment_id], schema.CELL_RUNS)]
        compare = page_text(ui.compare_url(url.split("/#")[0], exp.experiment_id, run_ids))
        assert "Comparing 2 Runs from 1 Experiment" in " ".join(compare.split())
        for name in SWEEP_NAMES:
            assert name in compare
        harness.send_signal(signal.SIGTERM)
        assert harness.wait(timeout=30) == 0
    finally:
        if harness.poll() is None:
            harness.kill()
    assert not _listening(port)
