"""`harness run --set KEY=VALUE` and `--accelerator` of `run` and `train`: overrides reach every
cell as the grid file's own values would, and every bad value ends in exit 2, one line, and
no run, before anything is created. No training: the grids are planned, not run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from mlflow import MlflowClient

from harness.cli import main
from harness.errors import UserError
from harness.grid import final_cells, groups, plan
from harness.preflight import check_accelerator
from harness.spec import apply_sets, grid_from_dict

GRID: dict[str, Any] = {
    "name": "opts",
    "protocol": "fixed",
    "tasks": [
        {"name": "copy", "params": {"length": 4, "n_train": 64}, "steps": 30},
        {"name": "sort", "params": {"length": 4, "n_train": 64}},
    ],
    "attention": ["dot", {"name": "multihead", "params": {"n_heads": 2}}],
    "optimizers": ["adam", "sgd"],
    "seeds": [0],
    "budget": {"steps": 20, "val_every": 10},
    "model": {"d_model": 16, "d_ff": 32, "n_layers": 1, "d_k": 8},
}
HAS_GPU = torch.cuda.is_available() or torch.backends.mps.is_available()


def _cells(spec: Any) -> list[Any]:
    return [final_cells(spec, group, group.fixed_lr)[0] for group in groups(spec)]


def test_sets_override_the_grid_file_in_every_cell_that_has_the_parameter() -> None:
    spec = grid_from_dict(GRID)
    sets = {
        "model.d_model": 32,  # in the grid's model:
        "train.batch_size": 8,  # not in the grid: a default
        "attention.n_heads": 4,  # multihead has it, dot does not
        "optim.momentum": 0.5,  # sgd has it, adam does not
        "task.length": 6,  # both tasks
        "budget.steps": 7,  # wins over the copy task's own steps: 30
        "budget.val_every": 7,
    }
    before, after = _cells(spec), _cells(apply_sets(spec, sets))
    assert len(after) == len(before) == 8
    for old, new in zip(before, after, strict=True):
        assert (new.model["d_model"], new.train["batch_size"]) == (32, 8)
        assert (old.model["d_model"], old.train["batch_size"]) == (16, 64)
        assert new.task_params["length"] == 6 and new.steps == 7 and new.train["val_every"] == 7
        assert new.attention_params.get("n_heads") == (4 if new.attention == "multihead" else None)
        assert new.optim.get("momentum") == (0.5 if new.optimizer == "sgd" else None)
        assert new.cell_id != old.cell_id
        assert (new.model["d_ff"], new.task_params["n_train"]) == (32, 64)  # the rest as it was
    assert apply_sets(spec, {}) is spec


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            {"nope": 1},
            "--set nope: unknown key (keys look like SECTION.NAME with SECTION one of: "
            "task, model, attention, optim, train; or budget.steps, budget.val_every)",
        ),
        (
            {"model.nope": 1},
            "--set model.nope: unknown key (choose from: model.d_ff, model.d_k, "
            "model.d_model, model.dropout, model.n_layers)",
        ),
        ({"model.d_model": "big"}, "--set model.d_model='big': input should be a valid integer"),
        ({"model.d_k": 7}, "--set model.d_k=7: with model.d_model=16, attention.n_heads=2"),
        (
            {"task.corpus": "x.txt"},
            "--set task.corpus: no entry of the grid's tasks (copy, sort) "
            "has this parameter (choose from: task.",
        ),
        ({"budget.steps": 0}, "--set budget.steps: input should be greater than 0 (got 0)"),
        ({"train.val_every": 5, "budget.val_every": 6}, "set it once"),
        ({"attention.n_heads": 3}, "--set attention.n_heads=3: "),
    ],
    ids=["section", "model-key", "value", "widths", "task-key", "steps", "twice", "heads"],
)
def test_a_bad_set_is_one_line_naming_it(sets: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError) as err:
        apply_sets(grid_from_dict(GRID), sets)
    line = str(err.value)
    assert message in line and "\n" not in line, line


def test_a_swept_key_cannot_be_set() -> None:
    model = {k: v for k, v in GRID["model"].items() if k != "d_k"}
    spec = grid_from_dict({**GRID, "model": model, "sweep": {"model.d_k": [8, 16]}})
    with pytest.raises(UserError, match=r"^--set model.d_k: the grid sweeps over it"):
        apply_sets(spec, {"model.d_k": 4})


def test_dry_run_plans_with_the_overrides(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(GRID))
    assert main(["run", str(path), "--dry-run", "--set", "budget.steps=7"]) == 0
    cells = plan(grid_from_dict(GRID)).cells
    assert f"{cells:>5} cells  {cells * 7:>9,} training steps" in capsys.readouterr().out


def _store_is_untouched(client: MlflowClient, folder: Path) -> None:
    assert [e.name for e in client.search_experiments()] == ["Default"]
    assert client.search_runs(["0"]) == [] and not (folder / "mlruns").exists()


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


TRAIN = ["train", "--task", "copy", "--attention", "dot", "--optimizer", "adam", "--steps", "2"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", "grid.yaml", "--set", "nope=1"], "--set nope: unknown key"),
        (["run", "grid.yaml", "--set", "model.d_model"], "--set 'model.d_model': expected"),
        (["run", "grid.yaml", "--set", "model.d_k=big"], "--set model.d_k='big'"),
        (["run", "grid.yaml", "--dry-run", "--set", "nope.x=1"], "--set nope.x: unknown key"),
        (
            ["run", "grid.yaml", "--accelerator", "bogus"],
            "--accelerator 'bogus': choose from auto, cpu, gpu, cuda, mps",
        ),
        (["run", "grid.yaml", "--dry-run", "--accelerator", "tpu"], "--accelerator 'tpu'"),
        ([*TRAIN, "--accelerator", "bogus"], "--accelerator 'bogus': choose from auto, cpu, gpu"),
    ],
    ids=["set-key", "set-form", "set-value", "dry-set", "run-acc", "dry-acc", "train-acc"],
)
def test_bad_sets_and_accelerators_exit_2_and_create_nothing(
    tracking_uri: str, client: MlflowClient, tmp_path: Path, capsys, argv: list[str], needle: str
) -> None:
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(GRID))
    assert main([*argv, "--tracking-uri", tracking_uri, "--no-progress"]) == 2
    assert needle in _one_error_line(capsys)
    _store_is_untouched(client, tmp_path)


@pytest.mark.skipif(HAS_GPU, reason="torch sees a GPU here")
@pytest.mark.parametrize("accelerator", ["gpu", "cuda", "mps"])
@pytest.mark.parametrize("command", ["train", "run"])
def test_a_gpu_torch_cannot_see_exits_2_and_creates_nothing(
    tracking_uri: str, client: MlflowClient, tmp_path: Path, capsys, command: str, accelerator: str
) -> None:
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(GRID))
    argv = TRAIN if command == "train" else ["run", "grid.yaml"]
    code = main([*argv, "--accelerator", accelerator, "--tracking-uri", tracking_uri])
    assert code == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"error: --accelerator {accelerator}: torch sees no ") and "auto" in line
    _store_is_untouched(client, tmp_path)


def test_cells_on_a_ray_cluster_are_not_checked_for_gpus_here() -> None:
    assert check_accelerator("gpu", here=False) == "gpu"  # the cluster's GPUs are its own
    with pytest.raises(UserError, match="--accelerator 'GPU'"):
        check_accelerator("GPU", here=False)
