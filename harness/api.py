"""The Python API: what the command line does, for notebooks and scripts, DataFrames out.

    import harness

    outcome = harness.run_grid("grids/quick.yaml")   # as `harness run grids/quick.yaml`
    table = harness.results(outcome.experiment)      # the report's results table
    runs = harness.load_runs("quick")                # one row per run
    files = harness.report("quick")                  # as `harness report quick`
    files = harness.export("quick", formats="csv")   # as `harness export quick`

Each function makes the command line's checks, before anything is created: a mistake the
caller can fix raises `harness.errors.UserError` with the one line the command line prints
(where the command line exits 2). `tracking_uri` None means what it means there:
$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working folder. The tables' columns are
those of the files `harness export` writes (harness.report.export; README: Results as data).

`check_run` and `launch` are the two steps of `harness run`, shared by `run_grid` and the
command line. Heavy libraries (torch, Lightning, MLflow, pandas) are imported inside the
functions, so `import harness` stays fast.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from harness import backends
from harness.errors import UserError

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient
    from rich.console import Console

    from harness.launch import GridOutcome
    from harness.report import Progress, ReportFiles
    from harness.spec import GridSpec

GridSource: TypeAlias = "str | os.PathLike[str] | Mapping[str, Any] | GridSpec"
DEFAULT_UI_URL = "http://127.0.0.1:5000"


# --------------------------------------------------------------------------- running a grid


@dataclass(frozen=True)
class GridRun:
    """What `run_grid` did."""

    experiment: str  # the MLflow experiment the runs are in
    tracking_uri: str
    # phase -> outcome -> cells: ok, diverged, failed, killed, skipped (FINISHED before), stale
    counts: dict[str, dict[str, int]]
    chosen_lr: dict[str, float]  # per task/attention/optimizer group: the rate tuning chose
    seconds: float

    @property
    def failed(self) -> int:
        """Cells that failed or were killed (`harness run` exits 1 when there are any)."""
        return sum(c.get("failed", 0) + c.get("killed", 0) for c in self.counts.values())


@dataclass(frozen=True)
class CheckedRun:
    """A grid and the options of one launch, checked; nothing is created yet."""

    spec: GridSpec
    experiment: str
    workers: int | None
    backend: str
    options: dict[str, Any]  # the backend's own (ray_address, cells_per_gpu)
    accelerator: str
    workers_here: int | None  # the workers that train on this machine


def run_grid(
    grid: GridSource,
    *,
    workers: int | None = None,
    backend: str = "local",
    tracking_uri: str | None = None,
    experiment: str | None = None,
    accelerator: str = "auto",
    sets: Mapping[str, Any] | None = None,
    ray_address: str | None = None,
    cells_per_gpu: int | None = None,
    progress: bool = False,
    rerun_changed: bool = False,
) -> GridRun:
    """Run a comparison grid, as `harness run` does, and say what was done.

    `grid` is a grid file's path, the grid as a mapping (parsed YAML), or a GridSpec; `sets`
    overrides its parameters as `--set` does ({"budget.steps": 50, "model.d_model": 32}).
    `experiment` None: $MLFLOW_EXPERIMENT_NAME, else the grid's name. Cells already FINISHED
    in the experiment are skipped, so a second call resumes; those made by other code or
    trained on other data are trained again with `rerun_changed` (as `--rerun-changed`). A bad
    grid or option raises UserError before any run exists; `progress` shows the progress bar.
    """
    if backend not in backends.BACKENDS:
        raise UserError(f"--backend {backend!r}: choose from {', '.join(backends.BACKENDS)}")
    given = argparse.Namespace(
        backend=backend, workers=workers, accelerator=accelerator,
        cells_per_gpu=cells_per_gpu, ray_address=ray_address,
    )  # fmt: skip
    checked = check_run(
        grid,
        sets=sets,
        workers=workers,
        backend=backend,
        options=backends.chosen_options(given),
        experiment=experiment,
        accelerator=accelerator,
    )
    from rich.console import Console

    from harness.store import absolute_uri, resolve_tracking_uri

    uri = absolute_uri(resolve_tracking_uri(tracking_uri))
    outcome, uri = launch(checked, uri, Console(stderr=True), progress, rerun_changed)
    return GridRun(
        experiment=checked.experiment,
        tracking_uri=uri,
        counts={phase: dict(counts) for phase, counts in outcome.counts.items()},
        chosen_lr={group.label: lr for group, lr in outcome.chosen_lr.items()},
        seconds=outcome.seconds,
    )


def load_spec(grid: GridSource, sets: Mapping[str, Any] | None = None) -> GridSpec:
    """A checked GridSpec from a path, a mapping or a GridSpec, with `--set` overrides."""
    from harness.spec import GridSpec, apply_sets, grid_from_dict, load_grid

    if isinstance(grid, GridSpec):
        spec = grid
    elif isinstance(grid, Mapping):
        spec = grid_from_dict(dict(grid))
    elif isinstance(grid, str | os.PathLike):
        spec = load_grid(grid)
    else:
        raise UserError(f"grid: expected a file path, a mapping or a GridSpec, got {grid!r}")
    return apply_sets(spec, sets or {})


def check_run(
    grid: GridSource,
    *,
    sets: Mapping[str, Any] | None,
    workers: int | None,
    backend: str,
    options: dict[str, Any],
    experiment: str | None,
    accelerator: str,
) -> CheckedRun:
    """`harness run`'s first step: the grid and every option checked, nothing created (what
    `--dry-run` stops after, with the cells' own check)."""
    spec = load_spec(grid, sets)
    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers}: must be >= 1")
    from harness.preflight import check_accelerator
    from harness.store import resolve_experiment
    from harness.telemetry import off_unless_chosen

    off_unless_chosen()  # MLflow's telemetry, in the workers this launch starts too
    experiment = resolve_experiment(experiment, spec.name)  # else $MLFLOW_EXPERIMENT_NAME
    check_accelerator(accelerator, here=backend == "local")  # a cluster's GPUs are its own
    from harness.train import quiet_libraries

    quiet_libraries()
    here = backends.workers_here(backend, workers, options)
    return CheckedRun(spec, experiment, workers, backend, options, accelerator, here)


def launch(
    checked: CheckedRun,
    tracking_uri: str | None,
    console: Console,
    progress: bool = True,
    rerun_changed: bool = False,
) -> tuple[GridOutcome, str]:
    """`harness run`'s second step: check the store, the backend and every cell's data and
    model, then create the runs and train them; the outcome and the tracking URI used.
    `rerun_changed`: train again finished cells of other code or data (harness.provenance)."""
    from mlflow import MlflowClient

    from harness.launch import Launcher
    from harness.preflight import check_cells
    from harness.store import check_tracking_uri, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri)
    backends.check(checked.backend, uri, checked.options, checked.accelerator)
    check_cells(checked.spec, checked.workers_here)  # every bad value stops here, before any run
    launcher = Launcher(
        checked.spec, MlflowClient(uri), checked.experiment, checked.workers,
        checked.accelerator, console, progress=progress, backend=checked.backend,
        backend_options=checked.options, rerun_changed=rerun_changed,
    )  # fmt: skip
    launcher.prepare()
    return launcher.run(), uri


# --------------------------------------------------------------------------- reading results


def load_runs(experiment: str, tracking_uri: str | None = None) -> pd.DataFrame:
    """Every run of the experiment, one row each (every phase and status; `current` marks each
    cell's run that counts), in grid order: the table `harness export` writes as runs.*."""
    from harness.report.collect import read_runs
    from harness.report.export import runs_frame

    return runs_frame(read_runs(_client(tracking_uri), experiment))


def results(experiment: str, tracking_uri: str | None = None) -> pd.DataFrame:
    """The report's results table: one row per configuration (task x sweep point x attention
    x optimizer) with its mean, 95% interval, n, chosen rate, parameters and time-to-target,
    the same numbers as the report's; the table `harness export` writes as results.*."""
    from harness.report.collect import collect
    from harness.report.export import results_frame
    from harness.report.stats.table import results_table

    return results_frame(results_table(collect(_client(tracking_uri), experiment, ui_url="")))


def report(
    experiment: str,
    out: str | os.PathLike[str] | None = None,
    *,
    formats: Sequence[str] = ("html", "pdf"),
    tracking_uri: str | None = None,
    ui_url: str | None = None,
) -> list[Path]:
    """Build the experiment's report as `harness report` does (default folder
    reports/EXPERIMENT): report.html and report.pdf as `formats` ask, figures/ and the data
    files (results.csv, ...); the paths written."""
    made = build(experiment, out, formats=formats, tracking_uri=tracking_uri, ui_url=ui_url)
    return [*made.files, *made.data]


def build(
    experiment: str,
    out: str | os.PathLike[str] | None,
    *,
    formats: Sequence[str],
    tracking_uri: str | None,
    ui_url: str | None,
    progress: Progress | None = None,
) -> ReportFiles:
    """`report`'s work, for the command line too (with its progress bar)."""
    from harness.report import FORMATS, build_report
    from harness.report.collect import find_experiment
    from harness.report.output import check_out_folder, default_folder

    formats = tuple(formats)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise UserError(f"--format {','.join(formats)!r}: choose from {', '.join(FORMATS)}")
    client = _client(tracking_uri)
    uri = client.tracking_uri
    folder = Path(out) if out is not None else default_folder(experiment)
    check_out_folder(folder, "--out" if out is not None else "report folder")
    find_experiment(client, experiment)  # a bad name ends here, before any output
    ui = ui_url or (uri if uri.startswith(("http://", "https://")) else DEFAULT_UI_URL)
    return build_report(client, experiment, folder, formats, ui_url=ui, progress=progress)


def export(
    experiment: str,
    out: str | os.PathLike[str] | None = None,
    *,
    formats: str | Sequence[str] = "csv",
    tracking_uri: str | None = None,
) -> list[Path]:
    """Write the experiment's results, comparisons and runs tables as `harness export` does
    (default folder reports/EXPERIMENT; formats csv, parquet, latex, json); the paths
    written."""
    from harness.report.collect import find_experiment
    from harness.report.export import export as write_export
    from harness.report.export import parse_formats
    from harness.report.output import check_out_folder, default_folder

    chosen = parse_formats(formats if isinstance(formats, str) else ",".join(formats))
    client = _client(tracking_uri)
    folder = Path(out) if out is not None else default_folder(experiment)
    check_out_folder(folder, "--out" if out is not None else "export folder")
    find_experiment(client, experiment)
    return write_export(client, experiment, folder, chosen)


def _client(tracking_uri: str | None) -> MlflowClient:
    """A client of an existing store (reading never creates one); a relative SQLite path is
    taken from the working folder now (harness.store.absolute_uri)."""
    from harness.telemetry import off_unless_chosen

    off_unless_chosen()  # before MLflow is imported, where this is the first to import it
    from mlflow import MlflowClient

    from harness.store import absolute_uri, check_tracking_uri, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri, existing=True)
    return MlflowClient(absolute_uri(uri))
