"""Beyond one machine, with real processes: an `mlflow server` on 127.0.0.1, a local Ray
instance, `harness ui`, and the errors a user meets when the pieces do not fit."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow_server import free_port, wait_for_http

from harness.cli import main

ray = pytest.importorskip("ray", reason="the `ray` extra (make test installs it)")

# Four tiny cells: copy of 4 symbols, two attention kinds, two seeds, 40 steps each.
GRID = {
    "name": "scale",
    "protocol": "fixed",
    "tasks": [{"name": "copy", "params": {"length": 4, "n_train": 512}}],
    "attention": ["dot", "multihead"],
    "optimizers": [{"name": "adam", "lr": 0.003}],
    "seeds": [0, 1],
    "model": {"d_model": 16, "d_ff": 32, "d_k": 8, "n_layers": 1},
    "train": {"batch_size": 32},
    "budget": {"steps": 40, "val_every": 20},
}


def rest(base: str, path: str, body: dict | None = None) -> dict:
    """One call to MLflow's REST API: GET with no body, POST with one."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        base + path, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def write_grid(folder: Path, name: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**GRID, "name": name}))
    return path


def children(client: MlflowClient, experiment: str) -> list[Run]:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if "harness.cell_id" in r.data.tags]


# --------------------------------------------------------------------------- shared fixtures


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray instance for the module (starting one takes seconds)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


# --------------------------------------------------------------------------- tracking server


def _check_over_rest(url: str, experiment: str) -> None:
    """Names, nesting, metric counts and artifacts, read back through the REST API."""
    exp = rest(url, f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={experiment}")
    exp_id = exp["experiment"]["experiment_id"]
    runs = rest(url, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id]})["runs"]
    tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"]["tags"]} for r in runs}
    (parent,) = [r for r in runs if "harness.cell_id" not in tags[r["info"]["run_id"]]]
    cells = [r for r in runs if r is not parent]
    assert parent["info"]["run_name"] == experiment
    assert sorted(r["info"]["run_name"] for r in cells) == [
        f"copy/{kind}/adam/lr=0.003/seed={seed}" for kind in ("dot", "multihead") for seed in (0, 1)
    ]
    for run in cells:
        run_id = run["info"]["run_id"]
        assert run["info"]["status"] == "FINISHED"
        assert tags[run_id]["mlflow.parentRunId"] == parent["info"]["run_id"]
        query = f"?run_id={run_id}&metric_key="
        loss = rest(url, "/api/2.0/mlflow/metrics/get-history" + query + "train/loss")["metrics"]
        val = rest(url, "/api/2.0/mlflow/metrics/get-history" + query + "val/acc")["metrics"]
        assert sorted(m["step"] for m in loss) == list(range(1, 41))
        assert sorted(m["step"] for m in val) == [20, 40]
        files = rest(url, f"/api/2.0/mlflow/artifacts/list?run_id={run_id}")["files"]
        assert {"config.json", "attention_maps.png"} <= {f["path"] for f in files}


@pytest.mark.slow  # 25 s with the server's start: `make test-slow` (CI runs both suites)
def test_a_grid_logs_to_a_tracking_server_over_http(server_url: str, tmp_path: Path) -> None:
    path = write_grid(tmp_path, "over_http")
    assert main(["run", str(path), "--tracking-uri", server_url, "--workers", "2",
                 "--no-progress"]) == 0  # fmt: skip
    _check_over_rest(server_url, "over_http")


@pytest.mark.slow  # 15-40 s on 2 cores: `make test-slow` (CI runs both suites)
def test_ray_workers_write_to_the_tracking_server_directly(
    server_url: str, local_ray: None, tmp_path: Path
) -> None:
    path = write_grid(tmp_path, "ray_http")
    assert main(["run", str(path), "--backend", "ray", "--workers", "2",
                 "--tracking-uri", server_url, "--no-progress"]) == 0  # fmt: skip
    _check_over_rest(server_url, "ray_http")


# --------------------------------------------------------------------------- Ray = local


@pytest.mark.slow  # 15-40 s on 2 cores: `make test-slow` (CI runs both suites)
def test_ray_and_local_backends_give_the_same_runs(
    _template_store: Path, local_ray: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    results = {}
    for backend in ("local", "ray"):
        db = tmp_path / f"{backend}.db"
        db.write_bytes(_template_store.read_bytes())
        uri = f"sqlite:///{db}"
        path = write_grid(tmp_path, "same")
        assert main(["run", str(path), "--backend", backend, "--workers", "2",
                     "--tracking-uri", uri, "--no-progress"]) == 0  # fmt: skip
        client = MlflowClient(uri)
        results[backend] = {
            r.info.run_name: (
                r.data.metrics,
                set(r.data.params),
                set(r.data.tags) - {"mlflow.parentRunId"},
                {k: len(client.get_metric_history(r.info.run_id, k)) for k in r.data.metrics},
            )
            for r in children(client, "same")
        }
    local, on_ray = results["local"], results["ray"]
    assert sorted(local) == sorted(on_ray) and len(local) == 4
    for name, (metrics, params, tags, counts) in local.items():
        ray_metrics, ray_params, ray_tags, ray_counts = on_ray[name]
        for key in ("val/acc", "val/loss", "test/acc", "test/loss"):
            assert metrics[key] == ray_metrics[key], (name, key)  # CPU determinism
        assert (params, tags, counts) == (ray_params, ray_tags, ray_counts)


@pytest.mark.slow  # 15-40 s on 2 cores: `make test-slow` (CI runs both suites)
@pytest.mark.parametrize("store", ["sqlite", "server"])
def test_ray_workers_report_their_steps_to_the_progress_bar(
    store: str, server_url: str, local_ray: None, tracking_uri: str, tmp_path: Path
) -> None:
    """Through the Ray queue, also when the actors write to a tracking server themselves (the
    launcher sees none of those writes): every cell's steps reach the bar before it ends."""
    import io

    from handled import record, steps_before_end
    from rich.console import Console

    from harness.launch import Launcher
    from harness.spec import load_grid

    name = f"ray_steps_{store}"
    uri = server_url if store == "server" else tracking_uri
    path = write_grid(tmp_path, name)
    console = Console(file=io.StringIO(), record=True, width=120)
    launcher = Launcher(load_grid(str(path)), MlflowClient(uri), name, 2, "cpu", console,
                        progress=True, backend="ray")  # fmt: skip
    launcher.prepare()
    seen = record(launcher)
    launcher.run()
    reports = steps_before_end(seen)
    assert len(reports) == 4
    for steps in reports.values():
        assert steps[0].steps == 1 and steps[-1].steps == 40
    assert launcher.bar.done == launcher.bar.total == launcher.bar.trained_here == 4 * 40
    assert "160/160 steps" in console.export_text()


# --------------------------------------------------------------------------- errors


def test_an_unreachable_tracking_server_fails_fast_naming_it(tmp_path: Path, capsys) -> None:
    path = write_grid(tmp_path, "nowhere")
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    silent = socket.socket()  # listens, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    mute = f"http://127.0.0.1:{silent.getsockname()[1]}"
    try:
        for uri in (closed, mute):
            started = time.monotonic()
            assert main(["run", str(path), "--tracking-uri", uri, "--no-progress"]) == 2
            assert time.monotonic() - started < 10
            err = capsys.readouterr().err.strip()
            assert err.startswith(f"error: tracking server {uri}: unreachable")
            assert len(err.splitlines()) == 1
    finally:
        silent.close()


def test_a_remote_ray_cluster_with_a_local_store_is_refused(
    tracking_uri: str, client: MlflowClient, tmp_path: Path, capsys
) -> None:
    path = write_grid(tmp_path, "remote")
    code = main(["run", str(path), "--backend", "ray", "--ray-address", "ray://head.invalid:10001",
                 "--tracking-uri", tracking_uri])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "workers on other machines" in err and "--tracking-uri http://" in err
    assert len(err.splitlines()) == 1
    assert client.get_experiment_by_name("remote") is None  # nothing was created


# --------------------------------------------------------------------------- harness ui


@pytest.mark.slow  # 15-40 s on 2 cores: `make test-slow` (CI runs both suites)
def test_harness_ui_serves_the_runs_on_loopback_and_stops_on_ctrl_c(
    tracking_uri: str, tmp_path: Path
) -> None:
    path = write_grid(tmp_path, "browse")
    assert main(["run", str(path), "--tracking-uri", tracking_uri, "--no-progress"]) == 0
    port = free_port()
    command = [sys.executable, "-m", "harness", "ui", "--port", str(port),
               "--tracking-uri", tracking_uri]  # fmt: skip
    ui = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/health", ui)
        with urllib.request.urlopen(url + "/", timeout=10) as page:
            assert "<!doctype html>" in page.read().decode().lower()
        exp = rest(url, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=browse")
        body = {"experiment_ids": [exp["experiment"]["experiment_id"]]}
        runs = rest(url, "/api/2.0/mlflow/runs/search", body)["runs"]
        assert len(runs) == 5  # the parent and its four cells
        ui.send_signal(signal.SIGINT)  # what Ctrl-C sends
        out, err = ui.communicate(timeout=20)
    finally:
        if ui.poll() is None:
            ui.kill()
    assert ui.returncode == 0, err
    assert f"http://127.0.0.1:{port}" in out and "Traceback" not in err
    with pytest.raises(OSError):  # nothing listens any more
        urllib.request.urlopen(url + "/health", timeout=2)


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--host", "not-an-ip"], "--host 'not-an-ip'"), (["--port", "70000"], "--port 70000")],
)
def test_harness_ui_bad_host_or_port_exits_2(
    tracking_uri: str, args: list[str], message: str, capsys
) -> None:
    assert main(["ui", "--tracking-uri", tracking_uri, *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow  # needs the module's Ray instance, started by the slow tests above
def test_a_gpu_grid_on_a_ray_instance_without_gpus_is_refused(
    local_ray: None, tracking_uri: str, client: MlflowClient, tmp_path: Path, capsys
) -> None:
    assert ray.cluster_resources().get("GPU", 0) == 0  # ray.init(num_cpus=2): no GPU
    path = write_grid(tmp_path, "no_gpu")
    code = main(["run", str(path), "--backend", "ray", "--accelerator", "gpu",
                 "--tracking-uri", tracking_uri])  # fmt: skip
    assert code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--accelerator gpu" in line and "has no GPU for Ray to give the workers" in line
    assert client.get_experiment_by_name("no_gpu") is None  # nothing was created
    assert ray.is_initialized()  # the instance it found is left as it was
