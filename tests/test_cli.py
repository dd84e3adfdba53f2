"""The command line: `harness list`, and every bad input ending in exit 2, one line, no run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from harness.cli import main
from harness.models.attention import ATTENTION
from harness.optim import OPTIMIZERS
from tasks import TASKS


def test_list_names_every_task_kind_and_optimizer(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in [*TASKS, *ATTENTION, *OPTIMIZERS]:
        assert name in out


def _bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    empty = tmp / "empty.txt"
    empty.write_text("")
    binary = tmp / "blob.bin"
    binary.write_bytes(b"\x00\x01\x02\xff" * 100)
    base = ["train", "--task", "copy", "--attention", "dot", "--optimizer", "adam"]
    char_lm = ["train", "--task", "char_lm", "--attention", "dot", "--optimizer", "adam"]
    return [
        (["train", "--task", "nope", "--attention", "dot", "--optimizer", "adam"], "'nope'"),
        (["train", "--task", "copy", "--attention", "nope", "--optimizer", "adam"], "'nope'"),
        (["train", "--task", "copy", "--attention", "dot", "--optimizer", "nope"], "'nope'"),
        ([*base, "--lr", "0"], "lr=0"),
        ([*base, "--lr", "-0.1"], "lr=-0.1"),
        ([*base, "--steps", "0"], "steps=0"),
        ([*base, "--steps", "-5"], "steps=-5"),
        ([*base, "--set", "model.nope=3"], "model.nope"),
        ([*base, "--set", "nope=3"], "nope"),
        ([*base, "--set", "model.d_model=big"], "model.d_model"),
        ([*base, "--set", "task.length=0"], "task.length"),
        ([*base, "--set", "optim.schedule=wavy"], "optim.schedule"),
        ([*base, "--attention", "multihead", "--set", "attention.n_heads=3"], "n_heads"),
        ([*char_lm, "--set", f"task.corpus={tmp / 'missing.txt'}"], "missing.txt"),
        ([*char_lm, "--set", f"task.corpus={empty}"], "empty.txt"),
        ([*char_lm, "--set", f"task.corpus={binary}"], "blob.bin"),
    ]


def test_bad_input_exits_2_with_one_line_and_creates_nothing(
    tracking_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = MlflowClient(tracking_uri)
    before = [e.name for e in client.search_experiments()]
    for argv, needle in _bad_inputs(tmp_path):
        code = main([*argv, "--tracking-uri", tracking_uri, "--no-progress"])
        err = capsys.readouterr().err.strip()
        assert code == 2, (argv, err)
        assert len(err.splitlines()) == 1 and err.startswith("error: "), (argv, err)
        assert needle in err, (argv, err)
    assert [e.name for e in client.search_experiments()] == before
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def test_unknown_name_lists_the_valid_choices(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--task", "copy", "--attention", "dott", "--optimizer", "adam"]) == 2
    err = capsys.readouterr().err
    assert all(kind in err for kind in ATTENTION)


def test_console_script_exit_code_and_missing_store_folder(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/no/such/folder/mlflow.db"
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "train", "--task", "copy", "--attention", "dot",
         "--optimizer", "adam", "--tracking-uri", uri],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: tracking URI {uri}: folder {tmp_path}/no/such/folder does not exist"
    ]
    assert not (tmp_path / "no").exists()
