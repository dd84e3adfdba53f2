"""How long `harness report` takes on a large experiment (issue 4: 1,000 runs x 500 steps < 60 s).

Writes an experiment shaped like a real full grid into a temporary SQLite store, through
MLflow's own client and the harness's own run schema (`resolve`, `run_tags`, `plan_json`):
every task x attention kind x optimizer, each optimizer's whole learning-rate grid in the tune
phase, several final seeds. Each run logs `--steps` steps of `train/loss` and `grad_norm`, a
validation point every 50 steps, `lr`, `time/step_ms` and throughput every 10 steps, and the
test metric; SGD at its largest rate diverges, and a few runs fail. The values are synthetic
curves (this measures the report, not training). Then it times, in the same process:

  baseline: paging through every run with search_runs (the least any report must read)
  report:   build_report, HTML and PDF, per stage

and prints the report's time and its ratio to the baseline. The store is deleted at the end
unless --keep is given.

    .venv/bin/python benchmarks/report_scale.py               # 1,064 runs, 500 steps
    .venv/bin/python benchmarks/report_scale.py --final-seeds 1 --steps 100   # a quick look
"""

from __future__ import annotations

import argparse
import hashlib
import math
import random
import shutil
import tempfile
import time
from pathlib import Path

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from harness import schema
from harness.grid import final_cells, groups, plan_json, tune_cells
from harness.report import build_report
from harness.spec import grid_from_dict
from harness.tracking import environment_tags, run_tags
from tasks import TASKS, get_task

BATCH = 1000  # MLflow's log_batch limit on metrics


def grid(final_seeds: int, steps: int) -> dict:
    return {
        "name": "scale",
        "protocol": "tune_then_final",
        "tasks": list(TASKS),
        "attention": ["dot", "scaled_dot", "additive", "multihead"],
        "optimizers": ["adam", "adamw", "sgd", "rmsprop"],
        "seeds": {"tune": [0], "final": list(range(1, final_seeds + 1))},
        "budget": {"steps": steps, "val_every": 50},
    }


def _unit(*parts: object) -> float:
    """A stable pseudo-random number in [0, 1) from the parts."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def write_run(client, exp_id, parent_id, cfg, group, sweep, steps, fail: bool) -> None:
    task = get_task(cfg.task)
    tags = run_tags(cfg, "scale", sweep) | {schema.PARENT: parent_id}
    run_id = client.create_run(exp_id, run_name=cfg.run_name, tags=tags).info.run_id
    params = [Param(k, v) for k, v in cfg.flat_params().items()]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i : i + 100])
    if fail:
        client.set_tag(run_id, schema.ERROR, "RuntimeError: injected by the benchmark")
        client.set_terminated(run_id, "FAILED")
        return
    rng = random.Random(cfg.cell_id)
    quality = 0.55 + 0.4 * _unit(group.task, group.attention, group.optimizer)
    best_lr = group.lr_grid[len(group.lr_grid) // 2]
    quality -= 0.08 * abs(math.log10(cfg.lr / best_lr))
    diverge_at = steps // 3 if group.optimizer == "sgd" and cfg.lr >= 1.0 else None
    now = int(time.time() * 1000)
    points: list[Metric] = []
    last = steps if diverge_at is None else diverge_at
    ms = {"dot": 9.0, "scaled_dot": 9.0, "additive": 21.0, "multihead": 7.0}[cfg.attention]
    for step in range(1, last + 1):
        loss = 2.5 * math.exp(-4 * quality * step / steps) + 0.05 * rng.random()
        if step == diverge_at:
            loss = math.nan
        points += [
            Metric(schema.TRAIN_LOSS, loss, now, step),
            Metric(schema.GRAD_NORM, rng.random(), now, step),
        ]
        if step % 10 == 0:
            step_ms = ms * (0.9 + 0.2 * rng.random())
            points += [
                Metric(schema.LR_METRIC, cfg.lr, now, step),
                Metric(schema.STEP_MS, step_ms, now, step),
                Metric(schema.THROUGHPUT, 64 * 32 * 1000 / step_ms, now, step),
            ]
        if step % 50 == 0 and diverge_at is None:
            points += _eval(task, "val", quality, step / steps, rng, now, step)
    if diverge_at is None:
        points += _eval(task, "test", quality, 1.0, rng, now, steps)
    for i in range(0, len(points), BATCH):
        client.log_batch(run_id, metrics=points[i : i + BATCH])
    outcome = "ok" if diverge_at is None else "diverged"
    tags = [RunTag(schema.OUTCOME, outcome), RunTag(schema.ACCELERATOR, "cpu")]
    if diverge_at:
        tags.append(RunTag(schema.DIVERGED_AT, str(diverge_at)))
    client.log_batch(run_id, tags=tags)
    client.set_terminated(run_id, "FINISHED")


def _eval(task, split, quality, progress, rng, now, step) -> list[Metric]:
    """A synthetic value of the task's metric: `level` itself where higher is better, a falling
    1.8 + 3 (1 - level) where lower is (bits per character, say), kept within its range."""
    level = quality * (1 - math.exp(-5 * progress)) + 0.02 * rng.gauss(0, 1)
    metric = task.metric
    value = level if metric.higher_is_better else 1.8 + 3 * (1 - level)
    low, high = metric.bounds
    return [Metric(schema.split_metric(split, metric.name), min(high, max(low, value)), now, step)]


def write_experiment(folder: Path, final_seeds: int, steps: int) -> int:
    spec = grid_from_dict(grid(final_seeds, steps))
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    exp_id = client.create_experiment("scale", (folder / "artifacts").as_uri())
    parent = client.create_run(exp_id, run_name="scale", tags={schema.GRID: "scale"})
    parent_id = parent.info.run_id
    client.log_param(parent_id, "protocol", spec.protocol)
    client.log_batch(parent_id, tags=[RunTag(k, v) for k, v in environment_tags().items()])
    client.log_text(parent_id, yaml.safe_dump(spec.model_dump(mode="json")), "grid.yaml")
    client.log_dict(parent_id, plan_json(spec), schema.PLAN_JSON)
    n = 0
    for group in groups(spec):
        tune = tune_cells(spec, group)
        finals = final_cells(spec, group, group.lr_grid[len(group.lr_grid) // 2])
        for cfg in tune + finals:
            write_run(client, exp_id, parent_id, cfg, group, group.sweep, steps, fail=n % 97 == 5)
            n += 1
        print(f"\r  wrote {n} runs", end="", flush=True)
    client.set_terminated(parent_id, "FINISHED")
    print()
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--final-seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--keep", action="store_true", help="keep the store and the report")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="report-scale-"))
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    try:
        started = time.perf_counter()
        n = write_experiment(folder, args.final_seeds, args.steps)
        print(f"wrote {n} runs x {args.steps} steps in {time.perf_counter() - started:.0f} s")
        client = MlflowClient(uri)
        started = time.perf_counter()
        exp = client.get_experiment_by_name("scale")
        runs = schema.search_all(client, exp.experiment_id)
        baseline = time.perf_counter() - started
        started = time.perf_counter()
        made = build_report(client, "scale", folder / "report")
        total = time.perf_counter() - started
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in made.seconds.items())
        print(f"baseline: search_runs over {len(runs)} runs  {baseline:6.1f} s")
        print(f"report (html + pdf)                 {total:6.1f} s  ({stages})")
        print(f"ratio report / baseline             {total / baseline:6.1f}")
        print(f"target: under 60 s -> {'met' if total < 60 else 'NOT met'}")
        if args.keep:
            print(f"kept: {folder}")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
