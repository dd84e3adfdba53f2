"""Artifacts that cannot be written: the experiment's artifact root is a path under a regular
file (which bites even as root, where chmod does not).

The root is shared by every run, so the launcher stops the grid at the first failed write
instead of failing every cell after it: the cell whose artifact failed ends FAILED with the
error as `harness.error`, the other running cells KILLED, the parent KILLED, one line on
stderr, exit 2, and no run left RUNNING. The same command resumes once the root is fixed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _grids import (
    assert_complete,
    assert_untouched,
    cells,
    launched,
    mid_grid,
    run_grid,
    snapshot,
    wait_for,
    write_grid,
)
from mlflow import MlflowClient

GRID = {"attention": ["dot", "multihead"], "optimizers": ["adam"], "seeds": [0]}


def _all_runs(client: MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


def test_an_artifact_root_under_a_file_stops_the_grid_before_any_cell(
    tracking_uri: str, client: MlflowClient, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    root = blocker / "artifacts"
    client.create_experiment("noroot", artifact_location=str(root))
    path = write_grid(tmp_path, "noroot", **GRID)

    assert run_grid(path, tracking_uri, "--workers", "2") == 2
    err = capsys.readouterr().err
    assert err == f"error: cannot write artifacts under {root} (Not a directory)\n"
    (parent,) = _all_runs(client, "noroot")  # the parent only: no cell was started
    assert parent.info.status == "KILLED"


@pytest.mark.slow
def test_an_artifact_root_that_breaks_mid_grid_fails_one_cell_and_stops_the_grid(
    tracking_uri: str, client: MlflowClient, tmp_path: Path
) -> None:
    root = tmp_path / "artifacts"
    client.create_experiment("broken", artifact_location=str(root))
    path = write_grid(tmp_path, "broken", **{**GRID, "seeds": [0, 1]},
                      budget={"steps": 100, "val_every": 50})  # fmt: skip
    err = tmp_path / "err.txt"
    with launched(path, tracking_uri, "--workers", "2", stderr=err) as launcher:
        wait_for(mid_grid(client, "broken"), "finished and running cells at once", launcher)
        kept = snapshot(client, cells(client, "broken"))
        root.rename(tmp_path / "saved")  # the root becomes a file: the next write fails
        root.write_text("")
        assert launcher.wait(timeout=240) == 2
    (line,) = err.read_text().splitlines()  # one line, no traceback
    stopped = re.fullmatch(
        rf"error: cannot write artifacts under {re.escape(str(root))} \(Not a directory\); "
        r"(\d+) running cells? (?:was|were) interrupted; run the same command again to resume",
        line,
    )
    assert stopped, line
    runs = cells(client, "broken")
    assert "RUNNING" not in [r.info.status for r in _all_runs(client, "broken")]
    (failed,) = [r for r in runs if r.info.status == "FAILED"]
    assert failed.data.tags["harness.outcome"] == "failed"
    assert failed.data.tags["harness.error"] == line.removeprefix("error: ").split(";")[0]
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert len(killed) == int(stopped.group(1))

    root.unlink()
    (tmp_path / "saved").rename(root)
    assert run_grid(path, tracking_uri, "--workers", "2") == 0
    assert_complete(client, "broken", n_cells=4)
    assert_untouched(client, kept)
    assert client.get_run(failed.info.run_id).info.status == "FAILED"
