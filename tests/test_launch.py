"""Real grids on the local backend: worker processes, one writer, resume, failure.

Process faults (SIGKILL, a tracking server that dies, divergence) are in tests/faults/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run

from harness.cli import main

# Tiny cells: a 4-symbol copy, a 16-wide model, 40 steps; a few seconds each on 2 cores.
BASE = {
    "tasks": [{"name": "copy", "params": {"length": 4, "n_train": 512}}],
    "model": {"d_model": 16, "d_ff": 32, "d_k": 8, "n_layers": 1},
    "train": {"batch_size": 32},
    "budget": {"steps": 40, "val_every": 20},
}


def _grid(tmp_path: Path, name: str, **fields) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **BASE, **fields}))
    return path


def _run(path: Path, uri: str, *extra: str) -> int:
    return main(["run", str(path), "--tracking-uri", uri, "--no-progress", *extra])


def _children(client: MlflowClient, name: str) -> list[Run]:
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if "harness.cell_id" in r.data.tags]


def _parent(client: MlflowClient, name: str) -> Run:
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if "harness.cell_id" not in r.data.tags]
    return parent


@pytest.mark.slow  # 15-40 s on 2 cores: `make test-slow` (CI runs both suites)
def test_fixed_grid_with_two_workers_then_resume(
    tracking_uri: str, client: MlflowClient, tmp_path: Path
) -> None:
    path = _grid(
        tmp_path,
        "fixed2",
        protocol="fixed",
        attention=["dot", "multihead"],
        optimizers=[{"name": "adam", "lr": 0.003}, {"name": "sgd", "lr": 0.1}],
        seeds=[0, 1],
    )
    assert _run(path, tracking_uri, "--workers", "2") == 0
    runs = _children(client, "fixed2")
    parent = _parent(client, "fixed2")
    assert len(runs) == 8 and len({r.data.tags["harness.cell_id"] for r in runs}) == 8
    assert parent.info.status == "FINISHED" and parent.info.run_name == "fixed2"
    for run in runs:
        assert run.info.status == "FINISHED", run.info.run_name
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["harness.phase"] == "final"
        assert run.data.tags["harness.outcome"] == "ok"
        assert run.data.tags["harness.accelerator"] == "cpu"
        # what a report needs without the training code (DESIGN run schema + report tags)
        assert run.data.tags["harness.metric"] == "acc"
        assert run.data.tags["harness.target"] == "0.99"
        assert run.data.tags["harness.higher_is_better"] == "true"
        assert run.data.tags["harness.sweep"] == "{}"
        # every point written by the concurrent workers arrived, once
        history = {k: client.get_metric_history(run.info.run_id, k) for k in run.data.metrics}
        assert [m.step for m in history["train/loss"]] == list(range(1, 41))
        assert len(history["grad_norm"]) == 40 and len(history["lr"]) == 4
        assert [m.step for m in history["val/acc"]] == [20, 40]
        assert len(history["test/acc"]) == 1
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.json", "attention_maps.png"} <= artifacts
    assert {"grid.yaml", "plan.json"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"env.python", "env.torch", "env.mlflow", "env.cpu_count"} <= set(parent.data.tags)
    plan = json.loads(Path(client.download_artifacts(parent.info.run_id, "plan.json")).read_text())
    assert sorted(c["cell_id"] for c in plan) == sorted(
        r.data.tags["harness.cell_id"] for r in runs
    )
    first_ids = {r.info.run_id for r in runs}

    # the same grid again: nothing to do
    assert _run(path, tracking_uri, "--workers", "2") == 0
    assert {r.info.run_id for r in _children(client, "fixed2")} == first_ids

    # one more seed: only its 4 cells run
    spec = yaml.safe_load(path.read_text())
    spec["seeds"] = [0, 1, 2]
    path.write_text(yaml.safe_dump(spec))
    assert _run(path, tracking_uri, "--workers", "2") == 0
    runs = _children(client, "fixed2")
    assert len(runs) == 12 and first_ids < {r.info.run_id for r in runs}
    assert sorted(r.data.params["seed"] for r in runs if r.info.run_id not in first_ids) == [
        "2", "2", "2", "2",
    ]  # fmt: skip


def test_tune_then_final_picks_the_best_rate(
    tracking_uri: str, client: MlflowClient, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = _grid(
        tmp_path,
        "tuned",
        attention=["scaled_dot"],
        optimizers=[{"name": "adam", "lr_grid": [1e-5, 1e-2]}],
        seeds={"tune": [0], "final": [1, 2]},
    )
    assert _run(path, tracking_uri, "--workers", "2") == 0
    runs = _children(client, "tuned")
    tune = {float(r.data.params["lr"]): r for r in runs if r.data.tags["harness.phase"] == "tune"}
    final = [r for r in runs if r.data.tags["harness.phase"] == "final"]
    assert sorted(tune) == [1e-5, 1e-2] and len(final) == 2
    best = max(tune, key=lambda lr: tune[lr].data.metrics["val/acc"])
    assert best == 1e-2  # 40 steps at 1e-5 learn nothing
    assert {float(r.data.params["lr"]) for r in final} == {best}
    assert sorted(r.data.params["seed"] for r in final) == ["1", "2"]
    assert all("test/acc" in r.data.metrics for r in final)
    capsys.readouterr()
    assert main(["status", str(path), "--tracking-uri", tracking_uri]) == 0
    out = capsys.readouterr().out
    assert "copy/scaled_dot/adam: 0.01" in out
    assert [line.split() for line in out.splitlines() if line.startswith(("tune", "final"))] == [
        ["tune", "2", "0", "0", "0", "0"],
        ["final", "2", "0", "0", "0", "0"],
    ]


@pytest.mark.slow  # 15-40 s on 2 cores: `make test-slow` (CI runs both suites)
def test_a_cell_that_raises_is_failed_and_the_rest_finish(
    tracking_uri: str, client: MlflowClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HARNESS_FAIL_CELLS", "copy/additive/")
    path = _grid(
        tmp_path,
        "faulty",
        protocol="fixed",
        attention=["dot", "additive"],
        optimizers=["adam"],
        seeds=[0],
    )
    assert _run(path, tracking_uri, "--workers", "2") == 1
    by_kind = {r.data.params["attention"]: r for r in _children(client, "faulty")}
    assert by_kind["dot"].info.status == "FINISHED"
    failed = by_kind["additive"]
    assert failed.info.status == "FAILED" and failed.data.tags["harness.outcome"] == "failed"
    assert "injected failure" in failed.data.tags["harness.error"]
    assert "error.txt" in {a.path for a in client.list_artifacts(failed.info.run_id)}
    # the failed cell runs again next time (and now succeeds); the finished one does not
    monkeypatch.delenv("HARNESS_FAIL_CELLS")
    assert _run(path, tracking_uri, "--workers", "1") == 0
    runs = _children(client, "faulty")
    assert len(runs) == 3
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED", "FINISHED"]


@pytest.mark.slow  # 13 s on 2 cores (tests/test_progress.py keeps the arithmetic fast)
def test_the_progress_bar_counts_steps_as_workers_report_them(
    tracking_uri: str, client: MlflowClient, tmp_path: Path
) -> None:
    """Real workers report how far their cell has come while it trains; the bar counts those
    steps before the cell ends, and ends full."""
    import io

    from handled import record, steps_before_end
    from rich.console import Console

    from harness.backends.base import Done
    from harness.launch import Launcher
    from harness.progress import REPORT_EVERY
    from harness.spec import load_grid

    path = _grid(tmp_path, "steps", protocol="fixed", attention=["dot"],
                 optimizers=[{"name": "adam", "lr": 0.003}], seeds=[0],
                 budget={"steps": 120, "val_every": 60})  # fmt: skip
    console = Console(file=io.StringIO(), record=True, width=120)
    launcher = Launcher(load_grid(str(path)), client, "steps", 1, "cpu", console, progress=True)
    launcher.prepare()
    seen = record(launcher)
    outcome = launcher.run()
    assert outcome.counts["final"]["ok"] == 1
    (steps,) = steps_before_end(seen).values()
    (done,) = [e for e, _ in seen if isinstance(e, Done)]
    # after the first step, now and then, and at the end; never one per step
    assert steps[0].steps == 1 and steps[-1].steps == 120
    assert [s.steps for s in steps] == sorted(s.steps for s in steps)
    assert len(steps) <= done.fit_seconds / REPORT_EVERY + 2
    # when the cell's Done came, the bar had counted its steps already
    assert [counted for e, counted in seen if e is done] == [120]
    assert launcher.bar.done == launcher.bar.total == launcher.bar.trained_here == 120
    line = console.export_text().strip().splitlines()[-1]
    assert "120/120 steps" in line and "cells 1/1" in line and "failed 0" in line


def test_dry_run_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _grid(tmp_path, "dry", attention=["dot", "additive"], optimizers=["adam", "sgd"])
    uri = f"sqlite:///{tmp_path}/dry.db"
    assert _run(path, uri, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "dry run" in out and not (tmp_path / "dry.db").exists()
    # tune: 2 kinds x (adam 5 rates + sgd 7 rates) x 1 tune seed; final: 4 groups x 3 seeds
    assert [line.split()[:2] for line in out.splitlines()[1:3]] == [["tune", "24"], ["final", "12"]]


# --------------------------------------------------------------------------- launcher and status
# A scripted backend (one module, as every backend is) answers each job at once with the writes
# and the `Done` a worker would send, so the protocol's bookkeeping runs against a real store
# without training.

AGREE = {
    "name": "agree",
    "tasks": ["copy"],
    "attention": ["dot"],
    "optimizers": [
        {"name": "adam", "lr_grid": [1e-3, 1e-2]},
        {"name": "sgd", "lr_grid": [0.1, 1.0]},
    ],
    "seeds": {"tune": [0, 1], "final": [2, 3]},
}
SCORES = {1e-3: 0.4, 1e-2: 0.8, 0.1: 0.7, 1.0: 0.3}  # validation metric by rate


def _answer(client: MlflowClient, run_id: str, cfg: dict) -> list:
    """What a worker sends for a cell: the rate 1.0 diverges at seed 1, the others end ok."""
    from harness import schema
    from harness.backends.base import Done, LogMetrics, LogTags, Terminate

    metric = client.get_run(run_id).data.tags[schema.METRIC]
    if cfg["lr"] == 1.0 and cfg["seed"] == 1:
        outcome, metrics = "diverged", {}
    else:
        value = SCORES[cfg["lr"]] + cfg["seed"] / 100
        outcome, metrics = "ok", {schema.val_metric(metric): value, schema.VAL_LOSS: 1 - value}
    points = [(key, value, 0, 40) for key, value in metrics.items()]
    return [
        LogMetrics(run_id, points),
        LogTags(run_id, [(schema.OUTCOME, outcome)]),
        Terminate(run_id, "FINISHED"),
        Done(run_id, outcome, metrics),
    ]


class _ScriptedPool:
    """Answers each job at once; after `answers` jobs, Ctrl-C (the job then in hand stays
    in flight)."""

    def __init__(self, client: MlflowClient, workers: int, answers: int | None) -> None:
        self.client, self.size, self.left = client, workers, answers
        self.running: list = []

    @property
    def idle(self) -> int:
        return self.size - len(self.running)

    def submit(self, job) -> None:
        self.running.append(job)

    def poll(self, timeout: float):
        while self.running:
            if self.left is not None and self.left == 0:
                raise KeyboardInterrupt
            job = self.running.pop(0)
            self.left = None if self.left is None else self.left - 1
            yield from self.answer(job.run_id, job.cfg)

    def answer(self, run_id: str, cfg: dict) -> list:
        return _answer(self.client, run_id, cfg)

    def shutdown(self, kill: bool = False) -> list:
        return self.running


def _scripted_backend(
    client: MlflowClient, monkeypatch: pytest.MonkeyPatch, answers: int | None = None
) -> str:
    """A backend module of its own, found by name as `harness.backends.<name>` is."""
    import sys
    import types

    module = types.ModuleType("harness.backends.scripted")
    module.OPTIONS = {}
    module.check = lambda tracking_uri: None
    module.make_pool = lambda workers, accelerator, uri: _ScriptedPool(client, workers, answers)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return "scripted"


def _status(client: MlflowClient, spec) -> tuple[dict[str, list[int]], dict[str, float]]:
    """`harness status` read back: phase -> counts (done .. pending), group -> chosen rate."""
    from harness.status import grid_status

    rows, chosen = {}, {}
    for line in grid_status(client, spec, spec.name).splitlines():
        words = line.split()
        if words[0] in ("tune", "final"):
            rows[words[0]] = [int(n) for n in words[1:]]
        elif line.startswith("  "):
            label, lr = line.strip().rsplit(": ", 1)
            chosen[label] = float(lr)
    return rows, chosen


def test_the_launcher_and_status_follow_one_protocol(
    client: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    from rich.console import Console

    from harness.grid import TuneResult, groups, protocol_step, tune_cells
    from harness.launch import Launcher
    from harness.spec import grid_from_dict

    spec = grid_from_dict(AGREE)
    adam, sgd = groups(spec)
    scores = [
        TuneResult(c.lr, c.seed, c.steps, SCORES[c.lr] + c.seed / 100)
        for c in tune_cells(spec, adam)
    ]
    adam_lr = protocol_step(spec, adam, scores)[0]

    def launch(answers: int | None) -> Launcher:
        backend = _scripted_backend(client, monkeypatch, answers)
        quiet = Console(file=io.StringIO())
        launcher = Launcher(spec, client, spec.name, 2, "cpu", quiet, False, backend=backend)
        launcher.prepare()
        return launcher

    # A first launch is stopped by Ctrl-C after 7 cells: adam's tuning, 3 of sgd's 4 tune
    # cells; the fourth, in flight, is KILLED. Adam's final cells are known and pending.
    first = launch(answers=7)
    with pytest.raises(KeyboardInterrupt):
        first.run()
    assert first.outcome.chosen_lr == {adam: adam_lr}
    rows, chosen = _status(client, spec)
    assert chosen == {adam.label: adam_lr}
    assert rows == {"tune": [7, 0, 1, 0, 1], "final": [0, 0, 0, 0, 4]}

    # The next launch queues what status calls pending (sgd's final cells wait for its rate)
    # and picks the rate status then reports, one of sgd's tune cells having diverged.
    second = launch(answers=None)
    assert second.outcome.chosen_lr == {adam: adam_lr}
    assert len(second.pending) == rows["tune"][4] + rows["final"][4] - len(spec.seeds.final)
    outcome = second.run()
    rows, chosen = _status(client, spec)
    assert chosen == {g.label: lr for g, lr in outcome.chosen_lr.items()}
    assert chosen == {adam.label: adam_lr, sgd.label: 0.1}  # 1.0 diverged at seed 1
    assert rows == {"tune": [7, 1, 0, 0, 0], "final": [4, 0, 0, 0, 0]}
    final = [r for r in _children(client, spec.name) if r.data.tags["harness.phase"] == "final"]
    rates = {(r.data.params["optimizer"], float(r.data.params["lr"])) for r in final}
    assert rates == {("adam", adam_lr), ("sgd", 0.1)}


class _FailingPool(_ScriptedPool):
    """Answers as _ScriptedPool, but the tune cell (lr 1e-2, seed 0) fails, as a cell whose
    code raises does."""

    def poll(self, timeout: float):
        from harness.backends.base import Done, LogTags, Terminate

        while self.running:
            job = self.running.pop(0)
            if job.cfg["phase"] == "tune" and job.cfg["lr"] == 1e-2 and job.cfg["seed"] == 0:
                yield LogTags(job.run_id, [("harness.outcome", "failed")])
                yield Terminate(job.run_id, "FAILED")
                yield Done(job.run_id, "failed")
            else:
                yield from _answer(self.client, job.run_id, job.cfg)


def test_a_failed_tune_cell_holds_back_its_groups_final_cells(
    client: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its group's rate is chosen only once the cell has run again (the next launch), so the
    group's final runs are all at one rate; status counts the same."""
    import io
    import sys
    import types

    from rich.console import Console

    from harness.grid import groups, plan
    from harness.launch import Launcher
    from harness.spec import grid_from_dict

    spec = grid_from_dict(AGREE)
    _, sgd = groups(spec)
    module = types.ModuleType("harness.backends.failing")
    module.OPTIONS = {}
    module.check = lambda tracking_uri: None
    module.make_pool = lambda workers, accelerator, uri: _FailingPool(client, workers, None)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    quiet = Console(file=io.StringIO())
    first = Launcher(spec, client, spec.name, 2, "cpu", quiet, False, backend="failing")
    first.prepare()
    outcome = first.run()
    assert set(outcome.chosen_lr) == {sgd}  # adam waits for its failed tune cell
    # The progress bar ends full: of 12 cells planned, the steps of the failed cell, of sgd's
    # diverged one (no steps reported by this scripted pool) and of adam's two final cells (not
    # run in this launch) leave its total
    steps = plan(spec).steps // 12
    assert first.bar.total == first.bar.done == first.bar.trained_here == 8 * steps
    rows, chosen = _status(client, spec)
    assert set(chosen) == {sgd.label}
    assert rows["final"] == [2, 0, 0, 0, 2]  # sgd's finals done, adam's pending

    second = Launcher(spec, client, spec.name, 2, "cpu", quiet, False,
                      backend=_scripted_backend(client, monkeypatch))  # fmt: skip
    second.prepare()
    second.run()
    # the cells finished in the first launch are done from the start, not trained in this one
    assert second.bar.done == second.bar.total == plan(spec).steps
    assert second.bar.trained_here == 3 * steps and second.bar.skipped_steps == 9 * steps
    final = [r for r in _children(client, spec.name) if r.data.tags["harness.phase"] == "final"]
    rates = {(r.data.params["optimizer"], float(r.data.params["lr"])) for r in final}
    assert rates == {("adam", 1e-2), ("sgd", 0.1)}  # one rate per group
    assert _status(client, spec)[0]["final"] == [4, 0, 0, 0, 0]


# --------------------------------------------------------------------------- halving

HALVING = {
    "name": "halving",
    "tasks": [{"name": "copy", "steps": 90}],
    "attention": ["dot"],
    "optimizers": [{"name": "adam", "lr_grid": [1e-4, 1e-3, 1e-2, 3e-2, 1e-1]}],
    "seeds": {"tune": [0], "final": [1, 2]},
    "tuning": {"scheduler": "halving", "eta": 3, "rungs": 3},
}
# Rung 0 (10 steps) ranks 1e-1 > 1e-2 > 1e-3 ..., as short runs favour large rates; rung 1
# (30 steps) reverses the two it keeps. Rung 2 never runs: ceil(2 / 3) leaves one rate.
RUNG_SCORES = {
    10: {1e-4: 0.1, 1e-3: 0.5, 1e-2: 0.7, 3e-2: 0.2, 1e-1: 0.8},
    30: {1e-2: 0.9, 1e-1: 0.6},
}


class _RungPool(_ScriptedPool):
    """Answers each tune cell with RUNG_SCORES by its steps (final cells score 0.5)."""

    def answer(self, run_id: str, cfg: dict) -> list:
        from harness import schema
        from harness.backends.base import Done, LogMetrics, LogTags, Terminate

        value = RUNG_SCORES[cfg["steps"]][cfg["lr"]] if cfg["phase"] == "tune" else 0.5
        metrics = {schema.val_metric("acc"): value, schema.VAL_LOSS: 1 - value}
        return [
            LogMetrics(run_id, [(k, v, 0, cfg["steps"]) for k, v in metrics.items()]),
            LogTags(run_id, [(schema.OUTCOME, "ok")]),
            Terminate(run_id, "FINISHED"),
            Done(run_id, "ok", metrics),
        ]


def test_successive_halving_promotes_the_best_third_and_resumes_rung_by_rung(
    client: MlflowClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """5 rates: all at 10 steps, the best 2 at 30, and the better of those two is chosen
    although it was second at 10 steps. A launch stopped inside rung 1 resumes there, and
    `status` counts the cells of rungs not reached yet as pending."""
    import io
    import sys
    import types

    from rich.console import Console

    from harness import schema
    from harness.grid import plan
    from harness.launch import Launcher
    from harness.spec import grid_from_dict

    spec = grid_from_dict(HALVING)
    assert (plan(spec).tune_cells, plan(spec).tune_steps) == (5 + 2, 5 * 10 + 2 * 30)
    assert plan(spec).tune_steps_exhaustive == 5 * 90
    module = types.ModuleType("harness.backends.rungs")
    module.OPTIONS = {}
    module.check = lambda tracking_uri: None
    answers: list[int | None] = [6, None]
    module.make_pool = lambda workers, accelerator, uri: _RungPool(client, 1, answers.pop(0))
    monkeypatch.setitem(sys.modules, module.__name__, module)

    def launch() -> Launcher:
        quiet = Console(file=io.StringIO())
        launcher = Launcher(spec, client, spec.name, 1, "cpu", quiet, False, backend="rungs")
        launcher.prepare()
        return launcher

    first = launch()
    with pytest.raises(KeyboardInterrupt):  # after rung 0 and one cell of rung 1
        first.run()
    rows, chosen = _status(client, spec)
    assert rows["tune"] == [6, 0, 1, 0, 1] and chosen == {}  # the 7th cell: KILLED, to rerun
    second = launch()
    assert [(cfg.lr, cfg.steps) for cfg, _ in second.pending] == [(1e-1, 30)]
    outcome = second.run()
    [group] = outcome.chosen_lr
    assert outcome.chosen_lr[group] == 1e-2
    # the plan's steps are exact under halving: the bar ends full, at the planned total
    assert second.bar.done == second.bar.total == plan(spec).steps
    assert second.bar.skipped_steps == 5 * 10 + 30 and second.bar.trained_here == 30 + 2 * 90
    rows, chosen = _status(client, spec)
    assert rows == {"tune": [7, 0, 0, 0, 0], "final": [2, 0, 0, 0, 0]}
    runs = [r for r in _children(client, spec.name) if r.info.status == "FINISHED"]
    tune = {
        (float(r.data.params["lr"]), int(r.data.params["steps"]), r.data.tags[schema.RUNG])
        for r in runs
        if r.data.tags[schema.PHASE] == "tune"
    }
    assert tune == {(lr, 10, "0/2") for lr in RUNG_SCORES[10]} | {
        (1e-2, 30, "1/2"),
        (1e-1, 30, "1/2"),
    }
    finals = {float(r.data.params["lr"]) for r in runs if r.data.tags[schema.PHASE] == "final"}
    assert finals == {1e-2}
