"""Bad input, end to end through the command line: exit code 2, one line on stderr that names
the field or the file, no traceback, and nothing created (no store, no run, no report folder).

tests/test_spec.py pins the exact message of every grid validation error at the unit level,
tests/test_tasks.py every bad task input, tests/test_cli.py the bad inputs of `harness train`;
here the same kinds of mistakes go through `harness run` (real and dry run), `harness report`
and `harness status` with a real SQLite store, and a property-based test feeds generated grid
specs to the loading and planning of `harness run --dry-run`.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient

from harness.cli import main
from harness.errors import UserError
from harness.grid import plan
from harness.spec import load_grid

GRID: dict[str, Any] = {
    "name": "bad",
    "protocol": "fixed",
    "tasks": [{"name": "copy", "params": {"length": 4, "n_train": 64}}],
    "attention": ["dot"],
    "optimizers": ["adam"],
    "seeds": [0],
    "budget": {"steps": 5},
}
LABELLED = "text,label\n" + "".join(
    f"story {i} about {('cats', 'dogs')[i % 2]},{i % 2}\n" for i in range(40)
)


def _files(folder: Path) -> dict[str, str]:
    """Input files a grid can name: corpora and text-classification tables, good and bad."""
    (folder / "empty.txt").write_text("")
    (folder / "blob.bin").write_bytes(b"\x00\x01\x02\xff" * 64)
    (folder / "nolabel.csv").write_text(LABELLED.replace("text,label", "text,kind"))
    (folder / "oneclass.csv").write_text("text,label\n" + "a b c,x\n" * 40)
    return {p.name: str(p) for p in folder.iterdir()} | {"missing.txt": str(folder / "nope.txt")}


def _task(name: str, **params: Any) -> dict[str, Any]:
    return {"tasks": [{"name": name, "params": params}]}


# (what to change in GRID, a text the one line must contain); `$name` stands for a file of _files
BAD_GRIDS: list[tuple[dict[str, Any], list[str]]] = [
    ({"budget": {"steps": "ten"}}, ["budget.steps", "'ten'"]),
    ({"tasks": "copy"}, ["tasks", "valid list"]),
    ({"seeds": {"final": [0.5]}}, ["seeds.final[0]"]),
    ({"attention": ["dot", "flash"]}, ["attention[1]", "'flash'", "scaled_dot"]),
    ({"optimizers": ["lion"]}, ["optimizers[0]", "'lion'"]),
    ({"tasks": ["copy", "nope"]}, ["tasks[1]", "'nope'"]),
    ({"attention": []}, ["attention: must not be empty"]),
    ({"seeds": []}, ["seeds", "must not be empty"]),
    ({"sweep": {"model.d_k": []}}, ["sweep.model.d_k: must not be empty"]),
    ({"budget": {"steps": 0}}, ["budget.steps", "greater than 0"]),
    ({"budget": {"steps": -5}}, ["budget.steps", "(got -5)"]),
    ({"budget": {"val_every": 0}}, ["budget.val_every"]),
    ({"tasks": [{"name": "copy", "steps": -1}]}, ["tasks[0].steps"]),
    ({"optimizers": [{"name": "adam", "lr": 0}]}, ["optimizers[0].lr"]),
    ({"seeds": [1, 1]}, ["seeds: duplicate value 1"]),
    ({"sweep": {"model.d_k": [8, 8]}}, ["sweep.model.d_k: duplicate value 8"]),
    ({"optimizers": [{"name": "adam", "lr_grid": [0.1, 0.1]}]}, ["optimizers[0].lr_grid"]),
    ({"attention": ["dot", "dot"]}, ["attention[1]: duplicate of attention[0]"]),
    ({"sweep": {"model.nope": [1, 2]}}, ["sweep.model.nope: unknown key"]),
    ({"sweep": {"lr": [0.1]}}, ["sweep.lr: unknown key"]),
    ({"seeds": [2**32]}, ["seeds[0]", "less than or equal to 4294967295"]),
    ({"name": "../../x"}, ["name: must be 1-64 characters"]),
    ({"nope": 1}, ["nope: unknown field"]),
    (_task("char_lm", corpus="$missing.txt"), ["char_lm", "nope.txt", "no such file"]),
    (_task("char_lm", corpus="$empty.txt"), ["char_lm", "empty.txt", "empty corpus"]),
    (_task("char_lm", corpus="$blob.bin"), ["char_lm", "blob.bin", "not a text file"]),
    (_task("text_cls", source="$nolabel.csv"), ["task.label_column='label'", "nolabel.csv"]),
    (_task("text_cls", source="$oneclass.csv"), ["task.label_column='label'", "one distinct"]),
    ({"attention": [{"name": "multihead", "params": {"n_heads": 3}}]}, ["n_heads=3"]),
    # sizes torch itself rejects (int64 overflow, a float) are caught before any run exists
    ({"sweep": {"model.d_model": [2**64]}}, ["model.d_model=18446744073709551616"]),
    ({"attention": [{"name": "multihead", "params": {"d_head": 1e309}}]}, ["d_head=inf"]),
    ({"tasks": [{"name": "copy", "params": {"length": 2**40}}]}, ["tasks[0].params.length="]),
    (
        {"optimizers": [{"name": "sgd", "params": {"nesterov": True, "momentum": 0}}]},
        ["optimizers[0].params.nesterov=True", "momentum > 0"],
    ),
    # a model that could not fit in this machine's memory, refused with the estimate
    (
        {"model": {"d_model": 2**15, "d_ff": 2**16}, "train": {"batch_size": 2**20}},
        ["copy/dot/adam: needs about", "GiB", "model.d_model=32768"],
    ),
]


def _with_files(value: Any, files: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _with_files(v, files) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_files(v, files) for v in value]
    if isinstance(value, str) and value.startswith("$"):
        return files[value[1:]]
    return value


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def _store_is_untouched(client: MlflowClient, folder: Path) -> None:
    """The store holds only MLflow's Default experiment, no run; no artifact or report folder."""
    experiments = client.search_experiments()
    assert [e.name for e in experiments] == ["Default"]
    assert client.search_runs([e.experiment_id for e in experiments]) == []
    assert not (folder / "mlruns").exists() and not (folder / "reports").exists()


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize(("changes", "needles"), BAD_GRIDS, ids=lambda v: str(v)[:40])
def test_a_bad_grid_exits_2_with_one_line_and_creates_nothing(
    tracking_uri: str,
    client: MlflowClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    changes: dict[str, Any],
    needles: list[str],
    dry_run: bool,
) -> None:
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({**GRID, **_with_files(changes, _files(tmp_path))}))
    extra = ["--dry-run"] if dry_run else []
    assert main(["run", str(path), "--tracking-uri", tracking_uri, "--no-progress", *extra]) == 2
    line = _one_error_line(capsys)
    for needle in needles:
        assert needle in line, line
    _store_is_untouched(client, tmp_path)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("name: t\ntasks: [copy, reverse\nattention: [dot]\n", "not valid YAML"),
        ("", "got an empty file"),
        ("- copy\n", "got a list"),
        (b"\xff\xfe\x00junk", "cannot read"),
    ],
    ids=["malformed", "empty", "list", "binary"],
)
def test_a_grid_file_that_is_not_a_grid_exits_2(
    tracking_uri: str,
    client: MlflowClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    text: str | bytes,
    needle: str,
) -> None:
    path = tmp_path / "grid.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert main(["run", str(path), "--tracking-uri", tracking_uri, "--no-progress"]) == 2
    line = _one_error_line(capsys)
    assert line.startswith(f"error: {path}: ") and needle in line, line
    _store_is_untouched(client, tmp_path)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", "nope.yaml"], "nope.yaml: no such file"),
        (["run", "."], "is a folder"),
        (["run", "grid.yaml", "--experiment", "../../x"], "--experiment '../../x'"),
        (["run", "grid.yaml", "--experiment", "/tmp/x"], "--experiment '/tmp/x'"),
        (["run", "grid.yaml", "--workers", "0"], "--workers 0"),
        (["run", "grid.yaml", "--ray-address", "auto"], "--ray-address"),
        (
            [
                "train",
                "--task",
                "copy",
                "--attention",
                "dot",
                "--optimizer",
                "adam",
                "--experiment",
                "../x",
            ],
            "--experiment '../x'",
        ),
        (
            [
                "train",
                "--task",
                "copy",
                "--attention",
                "dot",
                "--optimizer",
                "adam",
                "--seed",
                str(2**32),
            ],
            "seed=4294967296",
        ),
    ],
    ids=[
        "missing",
        "folder",
        "relative-experiment",
        "absolute-experiment",
        "workers",
        "ray-address",
        "train-experiment",
        "train-seed",
    ],
)
def test_bad_options_exit_2_and_create_nothing(
    tracking_uri: str,
    client: MlflowClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    needle: str,
) -> None:
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(GRID))
    assert main([*argv, "--tracking-uri", tracking_uri, "--no-progress"]) == 2
    line = _one_error_line(capsys)
    assert needle in line, line
    _store_is_untouched(client, tmp_path)


@pytest.mark.parametrize("command", ["report", "status"])
def test_reading_a_store_that_does_not_exist_creates_none(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    """`harness report` and `harness status` only read: they used to leave a new, empty
    mlflow.db behind (and print MLflow's migration lines) when pointed at nothing."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main([command, "quick"]) == 2
    assert _one_error_line(capsys) == (
        "error: tracking URI sqlite:///mlflow.db: no store at mlflow.db (nothing was run with it)"
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("setup", ["unknown", "empty"])
def test_report_of_an_unknown_or_empty_experiment_makes_no_default_folder(
    tracking_uri: str, client: MlflowClient, tmp_path: Path, capsys, setup: str
) -> None:
    """As tests/test_report.py's test with --out, but with the default folder reports/NAME."""
    if setup == "empty":
        client.create_experiment("nothing-here")
    name = "nothing-here" if setup == "empty" else "no-such"
    assert main(["report", name, "--tracking-uri", tracking_uri, "--no-progress"]) == 2
    assert f"'{name}'" in _one_error_line(capsys)
    assert not (tmp_path / "reports").exists() and not (tmp_path / "mlruns").exists()


def _console(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    harness = Path(sys.executable).parent / "harness"
    return subprocess.run(
        [str(harness), *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": str(harness.parent), "HOME": str(cwd)},
    )


def test_console_script_exits_2_on_a_malformed_grid_and_creates_no_store(tmp_path: Path) -> None:
    (tmp_path / "g.yaml").write_text("name: t\ntasks: [copy\n")
    proc = _console("run", "g.yaml", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: g.yaml: not valid YAML: "), proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.yaml"]


def test_console_script_exits_2_on_report_of_an_unknown_experiment(
    tracking_uri: str, tmp_path: Path
) -> None:
    proc = _console("report", "nope", "--tracking-uri", tracking_uri, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: no experiment 'nope' in the tracking store"]
    assert not (tmp_path / "reports").exists()


# --------------------------------------------------------------------------- generated grids

VALID: dict[str, st.SearchStrategy[Any]] = {
    "name": st.sampled_from(["g", "ok.1", "A-b_c"]),
    "protocol": st.sampled_from(["fixed", "tune_then_final"]),
    "tasks": st.lists(
        st.sampled_from(
            [
                "copy",
                "reverse",
                {"name": "sort", "steps": 10},
                {"name": "copy", "params": {"length": 3}},
            ]
        ),
        min_size=1,
        max_size=2,
        unique_by=repr,
    ),
    "attention": st.lists(
        st.sampled_from(
            [
                "dot",
                "scaled_dot",
                "additive",
                "multihead",
                {"name": "multihead", "params": {"n_heads": 2}},
            ]
        ),
        min_size=1,
        max_size=2,
        unique_by=repr,
    ),
    "optimizers": st.lists(
        st.sampled_from(
            [
                "adam",
                "rmsprop",
                {"name": "sgd", "lr": 0.1, "lr_grid": [0.01, 0.1]},
                {"name": "adamw", "params": {"weight_decay": 0.1}},
            ]
        ),
        min_size=1,
        max_size=2,
        unique_by=repr,
    ),
    "seeds": st.lists(st.integers(0, 5), min_size=1, max_size=3, unique=True)
    | st.fixed_dictionaries({"tune": st.just([0]), "final": st.just([1, 2])}),
    "budget": st.fixed_dictionaries(
        {}, optional={"steps": st.integers(1, 100), "val_every": st.integers(1, 50)}
    ),
    "model": st.fixed_dictionaries(
        {}, optional={"d_model": st.sampled_from([16, 32]), "dropout": st.just(0.1)}
    ),
    "sweep": st.dictionaries(
        st.sampled_from(["model.d_k", "train.batch_size", "train.log_every"]),
        st.lists(st.sampled_from([4, 8, 16]), min_size=1, max_size=3, unique=True),
        max_size=2,
    ),
}
REQUIRED = ("name", "tasks", "attention", "optimizers")
# Where a mistake can go: a top-level field, or a path into one (created when absent).
PLACES = [(key,) for key in [*VALID, "train", "unknown"]] + [
    ("tasks", 0),
    ("tasks", 0, "params"),
    ("tasks", 0, "params", "length"),
    ("tasks", 0, "steps"),
    ("attention", 0),
    ("attention", 0, "params", "n_heads"),
    ("optimizers", 0, "lr"),
    ("optimizers", 0, "lr_grid"),
    ("optimizers", 0, "params", "momentum"),
    ("seeds", "tune"),
    ("seeds", 0),
    ("budget", "steps"),
    ("budget", "val_every"),
    ("budget", "epochs"),
    ("model", "d_k"),
    ("model", "dropout"),
    ("train", "batch_size"),
    ("sweep", "model.d_k"),
    ("sweep", "model.nope"),
    ("sweep", "lr"),
    ("sweep", ""),
    ("sweep", "model.d_k", 0),
    ("model", "a\nb"),
    ("sweep", "model.x\ry"),
    ("tasks", 0, "params", "\n"),
    ("bad\nfield",),
]
junk = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2**40) | st.floats() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=2)
    ),
    max_leaves=4,
)
MISTAKES = (
    st.sampled_from(
        [
            0,
            -1,
            -0.5,
            2**64,
            1e309,
            "",
            "nope",
            "../x",
            [],
            [1, 1],
            [0.1, 0.1],
            {},
            {"name": "flash"},
            ["lion"],
            [None],
            "3e-3",
            True,
            float("nan"),
            "line\nbreak",
            {"a\nb": 1},
        ]
    )
    | junk
)


def _put(spec: dict[str, Any], place: tuple[Any, ...], value: Any) -> None:
    """Set spec[place[0]][place[1]]... = value, making the containers on the way (an int in
    `place` stands for the first entry of a list)."""
    node: Any = spec
    for key, child in itertools.pairwise(place):
        empty: Any = [] if isinstance(child, int) else {}
        if isinstance(node, list):
            if not node or not isinstance(node[0], list | dict):
                node[:1] = [empty]
            node = node[0]
        else:
            if not isinstance(node.get(key), list | dict):
                node[key] = empty
            node = node[key]
    if isinstance(node, list):
        node[:1] = [value]
    else:
        node[place[-1]] = value


@st.composite
def grid_specs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid grid, then zero to two mistakes put into it (about a third stay valid)."""
    spec = {key: draw(VALID[key]) for key in REQUIRED}
    for key in set(VALID) - set(REQUIRED):
        if draw(st.booleans()):
            spec[key] = draw(VALID[key])
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        _put(spec, draw(st.sampled_from(PLACES)), draw(MISTAKES))
    missing = draw(st.sampled_from([None] * 9 + list(REQUIRED)))  # a required field left out
    if missing:
        del spec[missing]
    return spec


@settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(spec=grid_specs())
def test_every_generated_grid_loads_and_plans_or_is_one_user_error_line(
    tmp_path_factory: pytest.TempPathFactory, spec: dict[str, Any]
) -> None:
    """What `harness run --dry-run` does before it builds any data: load, validate, plan."""
    path = tmp_path_factory.mktemp("grid") / "g.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    try:
        planned = plan(load_grid(path))
    except UserError as err:
        message = str(err)
        assert message.startswith(f"{path}: ") and "\n" not in message and "\r" not in message
        event("rejected")
    else:
        assert planned.groups >= 1 and planned.final_cells >= 1
        event("valid")
