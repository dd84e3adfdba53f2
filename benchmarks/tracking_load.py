"""How many workers one MLflow tracking server keeps up with: N simulated workers write to a
real `mlflow server` over HTTP, on a SQLite store and on a PostgreSQL store, and the server's
sustained points/s and request latencies are printed per N.

Each simulated worker is a process that does what a Ray actor of the harness does for each
cell, through the harness's own logger (harness.tracking.MlflowRunLogger) and a plain
MlflowClient, with no training in between, so the server is driven as hard as the workers
can: create the run with its tags, log its params, log the points of `--steps` steps on the
default schedule (train/loss and grad_norm every step; lr, time/step_ms and
throughput/tokens_per_s every 10 steps; validation and attention diagnostics every 100),
which the logger sends in `log_batch` calls of up to 1,000 points, write the two small
artifacts of a cell (its config, its per-example test outcomes), set the outcome tag and
end the run; then the next cell. Every call is timed in the worker.

Per store and N, a fresh store and a fresh server (MLflow's default 4 server processes;
`--server-workers`). The workers start together, run for `--seconds`, and only calls that
end inside the window after `--warmup` seconds count:

- points/s: metric points in the `log_batch` calls that completed in the window / window;
- requests/s: calls of every kind completed in the window / window;
- p50 / p99: latency of those calls in ms (every kind, the slow artifact uploads included);
- errors: calls that raised (MLflow's client retries a failing request before raising).

The sizing rule divides the capacity by what one real worker sends: `--demand-from URI
EXPERIMENT` reads a finished grid's FINISHED runs (e.g. the quick grid after `make demo`:
`--demand-from sqlite:///mlflow.db quick`) and prints their median points per second of run
time and requests per run. Client and server share this machine's cores, so on a small
machine the figures are a lower bound for a server of its own.

    .venv/bin/python benchmarks/tracking_load.py                     # N = 1 2 4 8 16, both stores
    .venv/bin/python benchmarks/tracking_load.py --stores sqlite --workers 1 4 --seconds 10
    .venv/bin/python benchmarks/tracking_load.py --demand-from sqlite:///mlflow.db quick

PostgreSQL comes from the system (`make setup-services`); without it only SQLite is measured.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the servers the tests start: one way to start them

import postgres_server  # noqa: E402
from mlflow_server import MlflowServer, migrate  # noqa: E402

PARAMS = 40  # params a cell logs (a real cell of the quick grid logs about this many)
SPLITS = ("train", "val", "test")  # its datasets, in one log_inputs call
CONFIG_BYTES, OUTCOMES_BYTES, FIGURE_BYTES = 2_000, 12_000, 40_000  # its artifacts, about
CALLS_PER_CELL = 7  # besides one log_batch per 1,000 points (counted on a real cell's run_job)


@dataclass(frozen=True)
class Call:
    kind: str
    start: float  # time.time() when it was sent
    end: float
    points: int
    failed: bool


class TimedClient:
    """The MlflowClient calls a cell makes, each timed; what the logger calls goes through."""

    def __init__(self, client: Any) -> None:
        self.client, self.calls = client, []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            points = len(kwargs.get("metrics", ())) if name == "log_batch" else 0
            start = time.time()
            try:
                result = method(*args, **kwargs)
            except Exception:
                self.calls.append(Call(name, start, time.time(), points, True))
                return None
            self.calls.append(Call(name, start, time.time(), points, False))
            return result

        return timed


def simulated_cell(client: TimedClient, exp_id: str, parent: str, name: str, steps: int) -> None:
    """One cell's calls, in the order the launcher and a worker make them, without the
    training: 7 calls plus one `log_batch` per 1,000 points (about 2.4 points a step), as
    a real cell makes them."""
    from mlflow.entities import Dataset, DatasetInput

    from harness.tracking import MlflowRunLogger

    tags = {"harness.cell_id": name, "harness.grid": "load", "mlflow.parentRunId": parent}
    run = client.create_run(exp_id, run_name=name, tags=tags)
    if run is None:
        return
    run_id = run.info.run_id
    logger = MlflowRunLogger(client, run_id)  # type: ignore[arg-type]
    logger.log_params({f"param.{i}": str(i) for i in range(PARAMS)})
    splits = [Dataset(f"load/{split}", "0" * 16, "code", "{}") for split in SPLITS]
    client.log_inputs(run_id, datasets=[DatasetInput(d) for d in splits])
    for step in range(1, steps + 1):
        logger.log_metrics({"train/loss": 1.0 / step, "grad_norm": 0.5}, step=step)
        if step % 10 == 0:
            logger.log_metrics({"lr": 1e-3, "time/step_ms": 20.0,
                                "throughput/tokens_per_s": 7e4}, step=step)  # fmt: skip
        if step % 100 == 0:
            logger.log_metrics({"val/acc": 0.5, "val/loss": 1.0, "attn/entropy/layer0": 2.0,
                                "attn/logit_std/layer0": 1.0}, step=step)  # fmt: skip
    logger.add_params({"data.n_train": "10000", "model.n_params": "70000"})
    client.log_text(run_id, "x" * CONFIG_BYTES, "config.json")
    client.log_text(run_id, "x" * OUTCOMES_BYTES, "test_outcomes.json")
    client.log_text(run_id, "x" * FIGURE_BYTES, "attention.png")
    logger.finish("FINISHED", "ok")


def worker(url: str, exp_id: str, parent: str, index: int, steps: int, ready: Any, go: Any,
           window: Any, out: Any) -> None:  # fmt: skip
    """Once every worker has imported what it needs (`ready`, then `go`): cells one after
    another until the window's end; the calls go to `out`."""
    import logging

    from mlflow import MlflowClient

    import harness.tracking  # noqa: F401  (torch and Lightning: imported before the clock runs)

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    client = TimedClient(MlflowClient(url))
    ready.put(index)
    go.wait()
    cell = 0
    while time.time() < window[1]:
        simulated_cell(client, exp_id, parent, f"w{index}/cell{cell}", steps)
        cell += 1
    out.put(client.calls)


@dataclass(frozen=True)
class Result:
    store: str
    workers: int
    points_per_s: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def measure(url: str, store: str, n: int, args: argparse.Namespace) -> Result:
    from mlflow import MlflowClient

    client = MlflowClient(url)
    exp_id = client.create_experiment(f"load-{n}")
    parent = client.create_run(exp_id, run_name="grid").info.run_id
    ctx = mp.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    window = ctx.Array("d", 2)  # [start of the warm-up, end], set once every worker is ready
    procs = [ctx.Process(target=worker, args=(url, exp_id, parent, i, args.steps, ready, go,
                                              window, out)) for i in range(n)]  # fmt: skip
    for p in procs:
        p.start()
    for _ in procs:
        ready.get()
    start_at = time.time()
    stop_at = start_at + args.warmup + args.seconds
    window[0], window[1] = start_at, stop_at
    go.set()
    calls = [c for _ in procs for c in out.get()]
    for p in procs:
        p.join()
    lo, hi = start_at + args.warmup, stop_at
    window = [c for c in calls if lo <= c.end <= hi]
    ms = sorted(1000 * (c.end - c.start) for c in window if not c.failed)
    p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))] if ms else float("nan")
    return Result(
        store, n,
        points_per_s=sum(c.points for c in window if not c.failed) / args.seconds,
        requests_per_s=len(window) / args.seconds,
        p50_ms=statistics.median(ms) if ms else float("nan"),
        p99_ms=p99,
        errors=sum(c.failed for c in window),
    )  # fmt: skip


def sqlite_template(folder: Path) -> Path:
    """A migrated empty SQLite store, made once (in another process: MLflow keeps it open)."""
    path = folder / "template.db"
    migrate(f"sqlite:///{path}")
    return path


def run_store(store: str, counts: list[int], args: argparse.Namespace, folder: Path) -> list:
    """Every N on one kind of store: a fresh store and server each time."""
    pg = None
    results = []
    try:
        if store == "postgres":
            pg = postgres_server.Postgres()
            pg.start()
            migrate(pg.create_database("template_load"))
        else:
            template = sqlite_template(folder)
        for n in counts:
            where = folder / f"{store}-{n}"
            where.mkdir()
            if pg is not None:
                uri = pg.create_database(f"load_{n}", template="template_load")
            else:
                shutil.copy(template, where / "store.db")
                uri = f"sqlite:///{where / 'store.db'}"
            server = MlflowServer(uri, where / "artifacts", workers=args.server_workers)
            server.start()
            try:
                result = measure(server.url, store, n, args)
            finally:
                server.stop()
            results.append(result)
            print(row(result), flush=True)
    finally:
        if pg is not None:
            pg.stop()
    return results


def row(r: Result) -> str:
    return (f"{r.store:<9} {r.workers:>3} {r.points_per_s:>10,.0f} {r.requests_per_s:>10.1f} "
            f"{r.p50_ms:>8.1f} {r.p99_ms:>9.1f} {r.errors:>6}")  # fmt: skip


def demand(uri: str, experiment: str) -> None:
    """What one real worker sends: per FINISHED cell run, points / run seconds, and calls."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        sys.exit(f"no experiment {experiment!r} in {uri}")
    runs = [r for r in client.search_runs([exp.experiment_id], max_results=5000)
            if "harness.cell_id" in r.data.tags and r.info.status == "FINISHED"]  # fmt: skip
    if not runs:
        sys.exit(f"no finished cell runs in {experiment!r}")
    rates, calls, points_per_run = [], [], []
    for run in runs:
        points = sum(len(client.get_metric_history(run.info.run_id, k)) for k in run.data.metrics)
        seconds = (run.info.end_time - run.info.start_time) / 1000
        rates.append(points / seconds)
        calls.append((CALLS_PER_CELL + math.ceil(points / 1000)) / seconds)
        points_per_run.append(points)
    rate, per_run = statistics.median(rates), statistics.median(points_per_run)
    print(f"{len(runs)} finished cells of {experiment!r}, per worker: median {rate:,.0f} points/s "
          f"(max {max(rates):,.0f}), median {statistics.median(calls):.2f} calls/s (max "
          f"{max(calls):.2f}); median {per_run:,.0f} points per cell")  # fmt: skip


def main() -> None:
    from harness.telemetry import off_unless_chosen

    off_unless_chosen()  # as in the harness's workers: no extra request per run for a link
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", nargs="+", default=["sqlite", "postgres"],
                        choices=["sqlite", "postgres"])  # fmt: skip
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds not counted first")
    parser.add_argument("--steps", type=int, default=1000, help="steps per simulated cell")
    parser.add_argument("--server-workers", type=int, default=4,
                        help="mlflow server --workers (MLflow's default: 4)")  # fmt: skip
    parser.add_argument("--demand-from", nargs=2, metavar=("URI", "EXPERIMENT"))
    args = parser.parse_args()
    if args.demand_from:
        demand(*args.demand_from)
        return
    stores = list(args.stores)
    if "postgres" in stores and postgres_server.missing():
        print(f"postgres: skipped ({postgres_server.missing()})")
        stores.remove("postgres")
    print(f"{args.seconds:g} s per point after {args.warmup:g} s warm-up; cells of {args.steps} "
          f"steps; mlflow server --workers {args.server_workers}")  # fmt: skip
    print(f"{'store':<9} {'N':>3} {'points/s':>10} {'requests/s':>10} {'p50 ms':>8} "
          f"{'p99 ms':>9} {'errors':>6}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="tracking-load-") as tmp:
        for store in stores:
            run_store(store, args.workers, args, Path(tmp))


if __name__ == "__main__":
    main()
