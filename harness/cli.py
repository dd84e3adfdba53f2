"""The `harness` command line. Exit codes: 0 done, 2 the user's input is wrong, 1 anything else.

Heavy imports (torch, Lightning, MLflow) happen inside the commands that need them, so
`harness --help` answers at once.

About 555 lines: one parser and one short handler per subcommand (list, schema, train, run,
status, report, export, ui, completion), each reading as one screen; the work itself lives in
the modules they call (`harness run`, `report` and `export` share theirs with harness.api).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import harness
from harness import backends
from harness.errors import UserError
from harness.telemetry import off_unless_chosen

SHELLS = ("bash", "zsh")  # `harness completion SHELL`


def main(argv: Sequence[str] | None = None) -> int:
    off_unless_chosen()  # MLflow's usage telemetry, before anything imports MLflow
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except UserError as err:
        line = str(err).replace("\r", "\\r").replace("\n", "\\n")  # one line, always
        print(f"error: {line}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    import shtab  # `.complete`: what shell completion offers for an argument (files, folders)

    parser = argparse.ArgumentParser(
        prog="harness",
        description="Compare attention mechanisms and optimizers across tasks, tracked in MLflow.",
    )
    parser.add_argument("--version", action="version", version=f"harness {harness.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="tasks, attention kinds and optimizers, with their parameters")
    p.set_defaults(handler=cmd_list)

    p = sub.add_parser("schema", help="the JSON Schema of a grid file (for editors), on stdout")
    p.set_defaults(handler=cmd_schema)

    p = sub.add_parser("train", help="train one model on one task and record it in MLflow")
    p.add_argument("--task", required=True, help="a task name (see `harness list`)")
    p.add_argument("--attention", required=True, help="an attention kind")
    p.add_argument("--optimizer", required=True, help="an optimizer")
    p.add_argument("--lr", type=float, help="learning rate (default: the optimizer's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and data")
    p.add_argument("--steps", type=int, help="training steps (default: the task's)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter, e.g. model.d_k=32 or task.length=20 (repeatable)",
    )
    p.add_argument(
        "--experiment", help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME, else train)"
    )
    _add_accelerator(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_tracking_uri(p)
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("run", help="run a comparison grid from a YAML file")
    p.add_argument("grid", help="grid spec, e.g. grids/quick.yaml").complete = shtab.FILE
    p.add_argument(
        "--workers",
        type=int,
        help="cells at a time (default: this machine's cores; with a Ray cluster, its CPUs)",
    )
    backends.add_options(p)  # --backend and each backend's own options (--ray-address)
    p.add_argument(
        "--experiment",
        help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME, else the grid's name)",
    )
    _add_accelerator(p)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter of every cell, e.g. model.d_model=32 or budget.steps=50 "
        "(repeatable; wins over the grid file)",
    )
    p.add_argument("--cells-per-gpu", **backends.CELLS_PER_GPU_FLAG)
    p.add_argument("--dry-run", action="store_true", help="print the plan, create nothing")
    p.add_argument(
        "--rerun-changed",
        action="store_true",
        help="train again the finished cells that other code made or that trained on other "
        "data (by default they are reused, with a warning)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_tracking_uri(p)
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("status", help="cells done, pending, failed, diverged; chosen rates")
    p.add_argument(
        "target", nargs="?", help="a grid YAML file, or an experiment name"
    ).complete = shtab.FILE
    p.add_argument(
        "--experiment",
        help="the experiment the grid was launched into (`harness run --experiment`; "
        "default: the grid's name)",
    )
    _add_tracking_uri(p)
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("report", help="HTML and PDF comparison report of an experiment")
    p.add_argument("experiment", help="MLflow experiment name (a grid's name)")
    p.add_argument(
        "--out", type=Path, help="output folder (default: reports/EXPERIMENT)"
    ).complete = shtab.DIRECTORY
    p.add_argument(
        "--format", default="html,pdf", help="comma-separated: html, pdf (default: html,pdf)"
    )
    p.add_argument(
        "--ui-url",
        help="MLflow UI address for the run links (default: the tracking URI when it is "
        "http(s), else http://127.0.0.1:5000)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_tracking_uri(p)
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("export", help="an experiment's results as data files (CSV, Parquet, ...)")
    p.add_argument("experiment", help="MLflow experiment name (a grid's name)")
    p.add_argument("--out", type=Path, help="output folder (default: reports/EXPERIMENT)")
    p.add_argument(
        "--format",
        default="csv",
        help="comma-separated: csv, parquet, latex, json (default: csv); writes results, "
        "comparisons and runs tables (LaTeX: results and comparisons)",
    )
    _add_tracking_uri(p)
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("ui", help="browse the runs in the MLflow UI (Ctrl-C stops it)")
    p.add_argument(
        "experiment",
        nargs="?",
        help="print the address of this experiment's runs table (default: the UI's home page)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)"
    )
    p.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    p.add_argument("--open", action="store_true", help="open the address in a web browser")
    _add_tracking_uri(p)
    p.set_defaults(handler=cmd_ui)

    p = sub.add_parser(
        "completion",
        help="the shell completion script, on stdout (e.g. harness completion bash "
        "> ~/.local/share/bash-completion/completions/harness)",
    )
    p.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    p.set_defaults(handler=cmd_completion)
    return parser


def _add_accelerator(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--accelerator",
        default="auto",
        help="Lightning accelerator: auto (default: the GPU when torch sees one), cpu, gpu, "
        "cuda, mps",
    )


def _add_tracking_uri(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )


def cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console

    from harness.config import ModelParams, TrainParams
    from harness.models.attention import ATTENTION
    from harness.optim import OPTIMIZERS, OptimParams
    from tasks import TASKS

    console = Console()
    table = _table("Tasks (--task; --set task.NAME=VALUE)", "task", "target", "steps")
    for t in TASKS.values():
        target = f"{t.metric.name} {t.metric.comparison} {t.target:g}"
        about = _about(f"{t.description} [{t.kind}]", t.params)
        table.add_row(t.name, target, str(t.default_steps), about)
    console.print(table)

    table = _table("Attention kinds (--attention; --set attention.NAME=VALUE)", "attention")
    for a in ATTENTION.values():
        table.add_row(a.name, _about(a.description, a.params))
    console.print(table)

    table = _table("Optimizers (--optimizer; --set optim.NAME=VALUE)", "optimizer", "lr")
    for o in OPTIMIZERS.values():
        grid = "tuning grid: " + ", ".join(f"{lr:g}" for lr in o.lr_grid)
        about = _about(o.description, o.params, skip=OptimParams)
        table.add_row(o.name, f"{o.default_lr:g}", f"{about}\n{grid}")
    console.print(table)
    for title, model in [
        ("Every optimizer also takes (optim.*)", OptimParams),
        ("Model (model.*)", ModelParams),
        ("Training (train.*)", TrainParams),
    ]:
        console.print(f"{title}:\n{_params_text(model)}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    import json

    from harness.spec_schema import grid_json_schema

    print(json.dumps(grid_json_schema(), indent=2))
    return 0


def _table(title: str, *columns: str) -> Any:
    from rich.table import Table

    table = Table(title=title, show_lines=True, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, no_wrap=True, style="bold" if i == 0 else None)
    table.add_column("description and parameters")
    return table


def _about(description: str, params: Any, skip: Any = None) -> str:
    """A registry entry's description, then its parameters (those `skip` lacks)."""
    text = _params_text(params, skip)
    return f"{description}\n{text}" if text else description


def _params_text(params: Any, skip: Any = None) -> str:
    """One line per parameter of a parameters model: name=default, then what it does."""
    shared = skip.model_fields if skip is not None else {}
    return "\n".join(
        f"  {name}={default}[dim]  {description}[/dim]"
        for name, default, description in params.described()
        if name not in shared or shared[name].default != default
    )


def cmd_train(args: argparse.Namespace) -> int:
    from harness.config import parse_set_options, resolve
    from harness.store import check_tracking_uri, resolve_experiment, resolve_tracking_uri

    experiment = resolve_experiment(args.experiment, "train")
    from harness.preflight import check_accelerator

    check_accelerator(args.accelerator)
    uri = resolve_tracking_uri(args.tracking_uri)
    check_tracking_uri(uri)
    cfg = resolve(
        args.task,
        args.attention,
        args.optimizer,
        lr=args.lr,
        seed=args.seed,
        steps=args.steps,
        overrides=parse_set_options(args.set),
    )
    from harness.memory import check_fits
    from harness.train import train_run

    check_fits(cfg)
    from tasks import get_task

    result = train_run(
        cfg,
        tracking_uri=uri,
        experiment=experiment,
        accelerator=args.accelerator,
        progress=not args.no_progress,
    )
    print(f"run {result.run_id}  {cfg.run_name}  outcome={result.outcome}")
    for key in sorted(result.metrics):
        print(f"  {key:<10} {result.metrics[key]:.4f}")
    if "chance" in result.data_info:
        metric = get_task(cfg.task).metric
        chance = float(result.data_info["chance"])
        print(f"  chance: {chance:.4f} ({metric.label} of the best input-blind predictor)")
    print(f"  {result.seconds:.1f} s; stored in {uri} (experiment {experiment!r})")
    print(f"  browse: {_browse_hint(uri, experiment)}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from harness.api import check_run, launch
    from harness.config import parse_set_options
    from harness.grid import plan

    checked = check_run(
        args.grid,
        sets=parse_set_options(args.set),
        workers=args.workers,
        backend=args.backend,
        options=backends.chosen_options(args),
        experiment=args.experiment,
        accelerator=args.accelerator,
    )
    if args.dry_run:
        from harness.preflight import check_cells

        check_cells(checked.spec, checked.workers_here)  # as a real run checks them first
        _print_plan(checked.spec, plan(checked.spec), args.workers or os.cpu_count() or 1)
        return 0
    try:
        outcome, uri = launch(
            checked, args.tracking_uri, Console(stderr=True), progress=not args.no_progress,
            rerun_changed=args.rerun_changed,
        )  # fmt: skip
    except KeyboardInterrupt:
        print(
            "interrupted: running cells stopped and marked KILLED; "
            "run the same command again to continue",
            file=sys.stderr,
        )
        return 130
    _print_outcome(outcome, checked.experiment, uri)
    return 1 if outcome.failed else 0


def _print_plan(spec: Any, p: Any, workers: int) -> None:
    print(f"grid {spec.name!r} ({spec.protocol}): {p.groups} groups")
    for phase in ("tune", "final"):
        cells, steps = getattr(p, f"{phase}_cells"), getattr(p, f"{phase}_steps")
        line = f"  {phase:<5} {cells:>5} cells  {steps:>9,} training steps"
        if phase == "tune" and spec.tuning.scheduler == "halving" and p.tune_cells:
            t = spec.tuning
            share = steps / p.tune_steps_exhaustive
            line += (
                f" (successive halving, eta {t.eta}, {t.rungs} rungs; exhaustive tuning: "
                f"{p.tune_steps_exhaustive:,} steps, this is {share:.0%} of it)"
            )
        print(line)
    print(f"  with {workers} workers; nothing was created (dry run)")


def _print_outcome(outcome: Any, experiment: str, uri: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{experiment}: {outcome.seconds:.0f} s", title_justify="left")
    columns = ("ok", "diverged", "failed", "killed", "skipped", "stale")
    for col in ("phase", *columns):
        table.add_column(col, justify="right" if col != "phase" else "left")
    for phase, counts in outcome.counts.items():
        table.add_row(phase, *(str(counts[c]) for c in columns))
    console = Console()
    console.print(table)
    for group, lr in outcome.chosen_lr.items():
        console.print(f"  {group.label}: lr {lr:g}")
    if outcome.fixed_cost_per_cell is not None:
        console.print(
            f"fixed cost per cell (median; all but the training steps): "
            f"{outcome.fixed_cost_per_cell:.2f} s"
        )
    print(f"stored in {uri} (experiment {experiment!r}); browse: {_browse_hint(uri, experiment)}")


def cmd_status(args: argparse.Namespace) -> int:
    from mlflow import MlflowClient

    from harness.spec import load_grid
    from harness.status import grid_status
    from harness.store import check_tracking_uri, resolve_tracking_uri

    target = args.target
    if target is None and args.experiment is None:
        raise UserError("status: name a grid file or an experiment (or --experiment NAME)")
    is_file = target is not None and (target.endswith((".yaml", ".yml")) or Path(target).is_file())
    if target is not None and not is_file and args.experiment is not None:
        raise UserError(f"--experiment {args.experiment}: only with a grid file "
                        f"({target!r} names an experiment already)")  # fmt: skip
    spec = load_grid(target) if is_file else None
    uri = resolve_tracking_uri(args.tracking_uri)
    check_tracking_uri(uri, existing=True)
    experiment = args.experiment or (spec.name if spec else target)
    print(grid_status(MlflowClient(uri), spec, experiment))
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    """The completion script for `args.shell`, made by shtab from this very parser."""
    import shtab

    print(shtab.complete(_parser(), shell=args.shell))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from harness.api import build
    from harness.report.output import default_folder
    from harness.report.progress import RichProgress

    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    try:
        with RichProgress(enabled=not args.no_progress) as progress:
            made = build(
                args.experiment, args.out, formats=formats, tracking_uri=args.tracking_uri,
                ui_url=args.ui_url, progress=progress,
            )  # fmt: skip
    except KeyboardInterrupt:
        out = args.out or default_folder(args.experiment)
        print(f"interrupted: no report written; {out} is as it was", file=sys.stderr)
        return 130
    for path in made.files:
        print(path)
    if made.data:
        print(f"data: {', '.join(p.name for p in made.data)} (in {made.folder})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from harness.api import export

    for path in export(
        args.experiment, args.out, formats=args.format, tracking_uri=args.tracking_uri
    ):
        print(path)
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    import ipaddress
    import socket

    from harness import ui
    from harness.store import check_tracking_uri, is_http, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    check_tracking_uri(uri, existing=args.experiment is not None)
    if is_http(uri):
        url = _experiment_url(uri, uri, args.experiment)
        print(f"{uri} is a tracking server and serves the UI itself: open {url}")
        if args.open:
            _open(url)
        return 0
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port}: must be between 1 and 65535")
    try:
        address = None if args.host == "localhost" else ipaddress.ip_address(args.host)
    except ValueError:
        raise UserError(f"--host {args.host!r}: not an IP address or localhost") from None
    with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as probe:
        try:
            probe.bind((args.host, args.port))
        except OSError as err:
            raise UserError(f"--host {args.host} --port {args.port}: {err.strerror}") from None
    if address is not None and not address.is_loopback:
        print(
            f"warning: listening on {args.host}: anyone who can reach this machine can read "
            "and change these runs (the MLflow UI has no login)",
            file=sys.stderr,
        )
    command = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", _ui_uri(uri),
        "--host", args.host, "--port", str(args.port), "--workers", "1",
        "--uvicorn-opts", "--log-level warning",
    ]  # fmt: skip
    shown = args.host
    if address is not None and address.is_unspecified:  # every interface: this machine's
        shown = "::1" if address.version == 6 else "127.0.0.1"
    base = f"http://[{shown}]:{args.port}" if ":" in shown else f"http://{shown}:{args.port}"
    url = _experiment_url(uri, base, args.experiment)
    print(f"MLflow UI on {uri}: {url}  (Ctrl-C stops it)", flush=True)
    # Quiet, and without MLflow's job runner (GenAI jobs, which start processes of their own)
    env = os.environ | {"MLFLOW_LOGGING_LEVEL": "WARNING", "PYTHONWARNINGS": "ignore"}
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")

    def ready(server: Any) -> None:
        if args.open and _wait_for_port(shown, args.port, server):
            _open(url)

    code = ui.serve(command, env, on_ready=ready)
    if code != 0:
        print(f"error: the MLflow server stopped with exit code {code}", file=sys.stderr)
        return 1
    print("stopped", file=sys.stderr)
    return 0


def _experiment_url(uri: str, base: str, experiment: str | None) -> str:
    """The UI's address of `experiment`'s runs table; its home page without an experiment."""
    if experiment is None:
        return base
    from mlflow import MlflowClient

    from harness import ui

    return ui.experiment_address(MlflowClient(uri), base, experiment)


def _wait_for_port(host: str, port: int, server: Any, timeout: float = 120.0) -> bool:
    """Whether the server accepts connections on `port` within `timeout` s (False: it ended)."""
    import socket
    import time

    deadline = time.monotonic() + timeout
    while server.poll() is None and time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.2)
    return False


def _open(url: str) -> None:
    import webbrowser

    if not webbrowser.open(url):
        print(f"no web browser found here: open {url}", file=sys.stderr)


def _browse_hint(uri: str, experiment: str) -> str:
    from harness.store import DEFAULT_TRACKING_URI, is_http

    if is_http(uri):
        return uri
    if uri == DEFAULT_TRACKING_URI:
        return f"harness ui {experiment}"
    return f"harness ui {experiment} --tracking-uri {_ui_uri(uri)}"


def _ui_uri(uri: str) -> str:
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


if __name__ == "__main__":
    sys.exit(main())
