"""The command line: `harness list`, `--version`, shell completion, `status` of a grid launched
into another experiment and of cells trained on several nodes, and every bad input ending in
exit 2, one line, no run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Param

import harness
from harness import schema
from harness.cli import main
from harness.grid import Group, final_cells, groups
from harness.models.attention import ATTENTION
from harness.optim import OPTIMIZERS
from harness.spec import GridSpec, load_grid
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


def test_version_is_the_packages(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"harness {harness.__version__}\n"


def test_bash_completion_completes_commands_flags_and_grid_files(tmp_path: Path) -> None:
    """The script `harness completion bash` prints, loaded into a real bash."""
    script = tmp_path / "harness.bash"
    script.write_text(_completion("bash"))
    (tmp_path / "grids").mkdir()
    (tmp_path / "grids" / "quick.yaml").write_text("name: quick\n")

    def complete(*words: str) -> list[str]:
        line = " ".join(("harness", *words))
        probe = (f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words)}; "
                 'COMP_LINE="$*"; _shtab_harness; printf "%s\\n" "${COMPREPLY[@]}"')  # fmt: skip
        done = subprocess.run(["bash", "-c", probe], cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert complete("ru") == ["run"]
    assert complete("run", "--rerun") == ["--rerun-changed"]
    assert complete("run", "grids/q") == ["grids/quick.yaml"]
    assert complete("completion", "z") == ["zsh"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completion_is_a_zsh_script(tmp_path: Path) -> None:
    script = tmp_path / "_harness"
    script.write_text(_completion("zsh"))
    done = subprocess.run(["zsh", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert script.read_text().startswith("#compdef harness")


def _completion(shell: str) -> str:
    done = subprocess.run([sys.executable, "-m", "harness", "completion", shell],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def _one_group_grid(folder: Path, seeds: int) -> tuple[Path, GridSpec, Group]:
    """A fixed-protocol grid g.yaml with one group (copy/dot/adam) and `seeds` seeds."""
    grid = folder / "g.yaml"
    grid.write_text(
        "name: g\nprotocol: fixed\ntasks: [copy]\nattention: [dot]\n"
        f"optimizers: [{{name: adam, lr: 0.001}}]\nseeds: {list(range(seeds))}\n"
    )
    spec = load_grid(str(grid))
    (group,) = groups(spec)
    return grid, spec, group


def test_status_reads_a_grid_launched_into_another_experiment(
    client: MlflowClient, tracking_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`harness run grid.yaml --experiment elsewhere`, then `harness status grid.yaml
    --experiment elsewhere`: the finished cell is found where the grid put it."""
    grid, spec, group = _one_group_grid(tmp_path, seeds=2)
    cfg = final_cells(spec, group, group.fixed_lr)[0]
    tags = {schema.CELL_ID: cfg.cell_id, schema.GRID: "g", schema.PHASE: "final",
            schema.OUTCOME: "ok"}  # fmt: skip
    run = client.create_run(client.create_experiment("elsewhere"), tags=tags)
    params = [Param(k, v) for k, v in cfg.flat_params().items()]
    client.log_batch(run.info.run_id, params=params)
    client.set_terminated(run.info.run_id, "FINISHED")
    uri = ["--tracking-uri", tracking_uri]

    def status(*argv: str) -> tuple[int, str, str]:
        code = main(["status", *argv, *uri])
        out, err = capsys.readouterr()
        return code, out, err.strip()

    code, out, _ = status(str(grid), "--experiment", "elsewhere")
    assert code == 0 and out.startswith("experiment 'elsewhere', grid 'g' (fixed)")
    assert ["final", "1", "0", "0", "0", "1"] in [line.split() for line in out.splitlines()]
    assert status(str(grid)) == (2, "", "error: no experiment 'g' in the tracking store")
    code, out, _ = status("--experiment", "elsewhere")  # the experiment alone, by the option
    assert code == 0 and out.startswith("experiment 'elsewhere'\n")
    assert "copy/dot/adam: 0.001" in out
    code, _, err = status("elsewhere", "--experiment", "other")
    assert code == 2 and err.startswith("error: --experiment other: only with a grid file")
    code, _, err = status()
    assert code == 2 and len(err.splitlines()) == 1


def test_status_counts_the_cells_each_node_trained_when_there_are_several(
    client: MlflowClient, tracking_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three finished cells on two Ray nodes (their harness.node tags), one on a third node
    that did not finish: the line counts the cells that count, per node."""
    grid, spec, group = _one_group_grid(tmp_path, seeds=4)
    exp = client.create_experiment("g")
    trained = [("host/aaaa0001", "FINISHED"), ("host/bbbb0002", "FINISHED"),
               ("host/aaaa0001", "FINISHED"), ("host/cccc0003", "KILLED")]  # fmt: skip
    for cfg, (node, status) in zip(final_cells(spec, group, group.fixed_lr), trained, strict=True):
        tags = {schema.CELL_ID: cfg.cell_id, schema.GRID: "g", schema.PHASE: "final",
                schema.NODE: node}  # fmt: skip
        run = client.create_run(exp, tags=tags)
        client.set_terminated(run.info.run_id, status)

    def status() -> list[str]:
        assert main(["status", str(grid), "--tracking-uri", tracking_uri]) == 0
        return capsys.readouterr().out.splitlines()

    assert status()[-1] == "cells per node: host/aaaa0001 2, host/bbbb0002 1"
    (other,) = client.search_runs([exp], f"tags.`{schema.NODE}` = 'host/bbbb0002'")
    client.delete_run(other.info.run_id)
    assert not any(line.startswith("cells per node") for line in status())  # one node: no line
