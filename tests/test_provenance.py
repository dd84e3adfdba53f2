"""Provenance: what a run records of its code, data and software, the launcher reusing a
finished cell of other code or data only with a warning (or training it again on request), and
the report listing every code version and data digest behind its numbers.

Finished cells are trained for real, in this process (`train_run`, the worker's own code path)
into the grid's experiment, so relaunching the grid finds them without starting a worker. "Runs
of another version of the code" are those runs with the code tags another checkout writes."""

from __future__ import annotations

import io
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from rich.console import Console
from test_report import tables
from test_stats import Run, correct_with, report_html, write_experiment

import harness
import tasks
from harness import schema
from harness.cli import main
from harness.grid import final_cells, groups
from harness.launch import Launcher
from harness.provenance import code_digest, current_code_digest, data_digests
from harness.spec import load_grid
from harness.tracking import git_commit
from harness.train import train_run
from tasks import get_task

TINY = {  # one tiny cell: a few seconds on 2 cores
    "protocol": "fixed",
    "model": {"d_model": 16, "d_ff": 32, "d_k": 8, "n_layers": 1},
    "train": {"batch_size": 32},
    "budget": {"steps": 20, "val_every": 10},
    "attention": ["dot"],
    "optimizers": [{"name": "adam", "lr": 0.003}],
    "seeds": [0],
}
OTHER_COMMIT = "0123456789ab" + "c" * 28
OTHER_CODE = "feedfacefeedface"


def _grid(tmp_path: Path, name: str, task: dict) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "tasks": [task], **TINY}))
    return path


def _train_cells(path: Path, uri: str) -> list[str]:
    """Every cell of the grid trained as a launched grid's cell would be; their run ids."""
    spec = load_grid(str(path))
    ids = []
    for group in groups(spec):
        for cfg in final_cells(spec, group, group.fixed_lr):
            ids.append(
                train_run(cfg, tracking_uri=uri, experiment=spec.name, grid=spec.name).run_id
            )
    return ids


def _relaunch(path: Path, uri: str, capsys: pytest.CaptureFixture, *extra: str) -> list[str]:
    """`harness run` again: its exit code must be 0; the lines it wrote to stderr."""
    capsys.readouterr()
    assert main(["run", str(path), "--tracking-uri", uri, "--no-progress", *extra]) == 0
    return capsys.readouterr().err.strip().splitlines()


def _cell_runs(client: MlflowClient, name: str) -> list:
    exp = client.get_experiment_by_name(name)
    return [r for r in client.search_runs([exp.experiment_id]) if schema.is_cell(r)]


# --------------------------------------------------------------------------- what is recorded


def test_the_code_digest_follows_the_training_code_and_nothing_else(tmp_path: Path) -> None:
    for package in (harness, tasks):
        source = Path(package.__file__).parent
        shutil.copytree(source, tmp_path / source.name, ignore=shutil.ignore_patterns("*.pyc"))
    packages = [tmp_path / "harness", tmp_path / "tasks"]
    assert code_digest(packages) == current_code_digest()  # the files decide, not where they are
    model = tmp_path / "harness" / "models" / "attention.py"
    original = model.read_text()
    line = "return q @ k.transpose(-2, -1)\n"
    model.write_text(original.replace(line, line.replace("\n", "  # unscaled\n"), 1))
    assert model.read_text() != original
    assert code_digest(packages) != current_code_digest()  # one line of a kernel
    model.write_text(original)
    report = tmp_path / "harness" / "report" / "context.py"
    report.write_text(report.read_text() + "\n# the report only reads runs\n")
    (tmp_path / "tasks" / "notes.txt").write_text("not code")
    assert code_digest(packages) == current_code_digest()


def test_data_digests_pin_a_runs_data_and_the_held_out_part_every_seed_shares() -> None:
    task = get_task("copy")
    params = task.params.defaults() | {"length": 4, "n_train": 256}
    seed0, again, seed1 = (data_digests(task.build(params, s)) for s in (0, 0, 1))
    assert seed0 == again  # a fresh build of the same data
    assert seed0.data != seed1.data and seed0.splits["train"] != seed1.splits["train"]
    assert seed0.heldout == seed1.heldout  # validation and test do not depend on the seed
    longer = data_digests(task.build(params | {"length": 5}, 0))
    assert longer.heldout != seed0.heldout


# --------------------------------------------------------------------------- reusing cells


def test_a_cell_of_other_code_is_reused_with_a_warning_or_trained_again_on_request(
    tracking_uri: str, client: MlflowClient, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = _grid(tmp_path, "prov", {"name": "copy", "params": {"length": 4, "n_train": 256}})
    (run_id,) = _train_cells(path, tracking_uri)
    run = client.get_run(run_id)
    tags = run.data.tags
    # what the training process recorded: its code, its data, its software
    assert tags[schema.CODE_DIGEST] == current_code_digest()
    task = get_task("copy")
    digests = data_digests(task.build(task.params.defaults() | {"length": 4, "n_train": 256}, 0))
    assert (tags[schema.DATA_DIGEST], tags[schema.HELDOUT_DIGEST]) == (
        digests.data, digests.heldout,
    )  # fmt: skip
    assert tags["env.python"] == platform.python_version()
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert {k: d.digest for k, d in inputs.items()} == digests.splits
    assert {d.name for d in inputs.values()} == {"copy"}

    assert _relaunch(path, tracking_uri, capsys) == []  # same code, same data: silent reuse
    assert len(_cell_runs(client, "prov")) == 1

    now = git_commit()
    client.set_tag(run_id, schema.CODE_DIGEST, OTHER_CODE)  # as edits not committed write it
    (line,) = _relaunch(path, tracking_uri, capsys)
    where = (f"commit {now[:12]} as here, with other uncommitted edits" if now
             else f"code digest {OTHER_CODE}; this code: {current_code_digest()}")  # fmt: skip
    assert line == f"warning: reusing 1 finished cell made by other code ({where}); " \
                   "--rerun-changed trains it again"  # fmt: skip
    client.set_tag(run_id, schema.GIT_COMMIT, OTHER_COMMIT)  # as another checkout writes it
    (line,) = _relaunch(path, tracking_uri, capsys)
    if now:
        assert "made by other code (commit 0123456789ab; this checkout: " + now[:12] in line
    assert len(_cell_runs(client, "prov")) == 1  # reused, not trained

    # --rerun-changed queues the cell for a worker (trained for real in the slow test below)
    console = Console(file=io.StringIO(), width=300)
    launcher = Launcher(load_grid(str(path)), client, "prov", 1, "cpu", console, progress=False,
                        rerun_changed=True)  # fmt: skip
    launcher.prepare()
    assert [cfg.cell_id for cfg, _ in launcher.pending] == [tags[schema.CELL_ID]]
    assert console.file.getvalue().startswith("training again 1 finished cell made by other code")


def test_a_cell_trained_on_another_corpus_is_reused_with_a_warning(
    tracking_uri: str, client: MlflowClient, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    corpus = tmp_path / "corpus.txt"
    lines = [
        f"line {i}: the {'quick' if i % 3 else 'lazy'} fox no {i * 7 % 11}." for i in range(90)
    ]
    corpus.write_text("\n".join(lines) + "\n")
    params = {"corpus": str(corpus), "seq_len": 16, "n_train": 64}
    path = _grid(tmp_path, "corpus", {"name": "char_lm", "params": params})
    _train_cells(path, tracking_uri)
    assert _relaunch(path, tracking_uri, capsys) == []
    corpus.write_text(corpus.read_text().replace("lazy", "sleepy"))  # another Python's corpus
    (line,) = _relaunch(path, tracking_uri, capsys)
    assert line.startswith("warning: reusing 1 finished cell trained on other data than this ")


# --------------------------------------------------------------------------- the report


def _runs_with_provenance(client: MlflowClient, name: str, mixed: bool) -> None:
    """Final runs of two configurations over three seeds; with `mixed`, the dot runs of seed 2
    come from other code, trained on other data (another corpus on another machine)."""
    runs = [Run(kind, "adam", s, correct_with(60 + 10 * s, s)) for kind in ("dot", "multihead")
            for s in (0, 1, 2)]  # fmt: skip
    write_experiment(client, name, runs)
    exp = client.get_experiment_by_name(name)
    for run in client.search_runs([exp.experiment_id]):
        if not schema.is_cell(run):
            continue
        other = mixed and run.data.params["attention"] == "dot" and run.data.params["seed"] == "2"
        seed = run.data.params["seed"]
        tags = {
            schema.GIT_COMMIT: OTHER_COMMIT if other else "f" * 40,
            schema.CODE_DIGEST: OTHER_CODE if other else "0" * 16,
            schema.DATA_DIGEST: ("d" if other else "a") * 15 + seed,
            schema.HELDOUT_DIGEST: ("e" if other else "b") * 16,
            "env.python": "3.11.9" if other else "3.11.7",
        }
        for key, value in tags.items():
            client.set_tag(run.info.run_id, key, value)


def test_the_report_lists_every_commit_and_data_digest_and_warns_when_they_mix(
    client: MlflowClient, tmp_path: Path
) -> None:
    _runs_with_provenance(client, "mixed", mixed=True)
    html = report_html(client, "mixed", tmp_path)
    (code,) = tables(html, "provenance-code")
    assert [(r["commit"], r["final runs"]) for r in code] in (
        [("f" * 40, "5"), (OTHER_COMMIT, "1")], [(OTHER_COMMIT, "1"), ("f" * 40, "5")],
    )  # fmt: skip
    (data,) = tables(html, "provenance-data")
    by_seed = {(r["seed"], r["data digest"]): r for r in data}
    assert set(by_seed) == {("0", "a" * 15 + "0"), ("1", "a" * 15 + "1"), ("2", "a" * 15 + "2"),
                            ("2", "d" * 15 + "2")}  # fmt: skip
    assert [by_seed[k]["check"] for k in sorted(by_seed)] == ["mixed", "mixed", "mixed", "mixed"]
    summary = html.split('<section id="summary">')[1].split("</section>")[0]
    versions = ["commit ffffffffffff (5 runs)", "commit 0123456789ab (1 run)"]
    assert any(f"mix 2 versions of the training code: {a}, {b}." in summary
               for a, b in (versions, versions[::-1]))  # fmt: skip
    assert "Runs of one seed trained on different data: text_cls seed 2." in summary
    assert "Validation and test data differ between runs of text_cls:" in summary
    assert "python 3.11.7 (5 runs), 3.11.9 (1 run)" in summary

    _runs_with_provenance(client, "clean", mixed=False)
    html = report_html(client, "clean", tmp_path)
    (code,) = tables(html, "provenance-code")
    assert [(r["commit"], r["code digest"], r["final runs"]) for r in code] == [
        ("f" * 40, "0" * 16, "6")
    ]
    (data,) = tables(html, "provenance-data")
    assert sorted((r["seed"], r["final runs"], r["check"]) for r in data) == [
        ("0", "2", "ok"), ("1", "2", "ok"), ("2", "2", "ok"),
    ]  # fmt: skip
    assert 'class="warning provenance"' not in html


# --------------------------------------------------------------------------- end to end


def _git(repo: Path, *args: str) -> str:
    who = ["-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    done = subprocess.run(["git", *who, *args], cwd=repo, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.slow  # four launches and two reports, each in a fresh interpreter: minutes
def test_a_changed_line_of_the_models_is_warned_about_and_the_report_lists_both_commits(
    _template_store: Path, tmp_path: Path
) -> None:
    """The issue's case, in a git checkout of this code: a finished grid, one line of
    harness/models/ changed and committed, the grid run again with one more seed."""
    repo = tmp_path / "checkout"
    for package in (harness, tasks):
        source = Path(package.__file__).parent
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(source, repo / source.name, ignore=ignore)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "first")
    first = _git(repo, "rev-parse", "HEAD")
    shutil.copy(_template_store, tmp_path / "mlflow.db")
    grid = _grid(tmp_path, "two", {"name": "copy", "params": {"length": 4, "n_train": 256}})
    env = {**os.environ, "PYTHONPATH": str(repo), "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"}

    def harness_cli(*args: str) -> list[str]:
        done = subprocess.run([sys.executable, "-m", "harness", *args, "--no-progress"],
                              cwd=tmp_path, env=env, capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stderr.strip().splitlines()

    assert harness_cli("run", str(grid)) == []
    model = repo / "harness" / "models" / "attention.py"
    line = "return q @ k.transpose(-2, -1)\n"
    model.write_text(model.read_text().replace(line, line.replace("\n", "  # unscaled\n"), 1))
    _git(repo, "commit", "-qam", "models: one line changed")
    second = _git(repo, "rev-parse", "HEAD")
    grid.write_text(yaml.safe_dump(yaml.safe_load(grid.read_text()) | {"seeds": [0, 1]}))
    (warning,) = harness_cli("run", str(grid))
    assert warning.startswith(f"warning: reusing 1 finished cell made by other code (commit "
                              f"{first[:12]}; this checkout: {second[:12]})")  # fmt: skip
    harness_cli("report", "two", "--format", "html", "--out", "mixed")
    html = (tmp_path / "mixed" / "report.html").read_text()
    (code,) = tables(html, "provenance-code")
    assert [(r["commit"], r["final runs"]) for r in code] == [(first, "1"), (second, "1")]
    assert "These results mix 2 versions of the training code" in html

    assert harness_cli("run", str(grid), "--rerun-changed")[0].startswith("training again 1")
    harness_cli("report", "two", "--format", "html", "--out", "rerun")
    html = (tmp_path / "rerun" / "report.html").read_text()
    (code,) = tables(html, "provenance-code")
    assert [(r["commit"], r["final runs"]) for r in code] == [(second, "2")]
    assert 'class="warning provenance"' not in html
