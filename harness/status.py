"""`harness status`: what a grid has done, read from the store, and what it still has to do.

Read-only. Per phase it counts cells done, diverged, failed (or KILLED), running and pending,
and it names the learning rate tuning chose for each group; where the finished cells trained
on several machines (a Ray cluster), how many each trained (their `harness.node` tags). With
the grid spec, pending and the chosen rates come from the protocol itself
(`harness.grid.protocol_step`, fed with the tune results the store holds), so `status` and
the launcher cannot disagree; with only an experiment name, from what the runs say.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from mlflow import MlflowClient
from mlflow.entities import Run

from harness import schema
from harness.errors import UserError
from harness.grid import TuneResult, groups, protocol_step, tune_rungs
from harness.spec import GridSpec

COLUMNS = ("done", "diverged", "failed", "running", "pending")
UNFINISHED = {"RUNNING": "running", "FAILED": "failed", "KILLED": "failed"}


def grid_status(client: MlflowClient, spec: GridSpec | None, experiment: str) -> str:
    """The status table as text: a title line, a header, one row per phase, chosen rates."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise UserError(f"no experiment {experiment!r} in the tracking store")
    query = schema.grid_filter(spec.name) if spec else ""
    runs = schema.search_all(client, exp.experiment_id, query)
    cells = [run for run in runs if schema.is_cell(run)]
    finished = schema.finished_by_cell(cells)
    rows: dict[str, Counter] = defaultdict(Counter)
    for run in finished.values():
        diverged = run.data.tags.get(schema.OUTCOME) == "diverged"
        rows[_phase(run)]["diverged" if diverged else "done"] += 1
    counted = set(finished)
    for run in cells:
        cell = run.data.tags[schema.CELL_ID]
        if cell not in counted and run.info.status in UNFINISHED:
            rows[_phase(run)][UNFINISHED[run.info.status]] += 1
            counted.add(cell)  # each unfinished cell once
    chosen = _pending_and_chosen(spec, finished, rows) if spec else _final_rates(cells)
    lines = [
        f"experiment {experiment!r}" + (f", grid {spec.name!r} ({spec.protocol})" if spec else "")
    ]
    lines.append(f"{'phase':<6}" + "".join(f"{c:>10}" for c in COLUMNS))
    for phase in ("tune", "final"):
        if phase in rows or spec is not None:
            lines.append(f"{phase:<6}" + "".join(f"{rows[phase][c]:>10}" for c in COLUMNS))
    if chosen:
        lines.append("chosen learning rates:")
        lines.extend(f"  {label}: {lr:g}" for label, lr in chosen.items())
    nodes = Counter(
        r.data.tags[schema.NODE] for r in finished.values() if schema.NODE in r.data.tags
    )
    if len(nodes) > 1:
        lines.append("cells per node: " + ", ".join(f"{n} {c}" for n, c in sorted(nodes.items())))
    return "\n".join(lines)


def _phase(run: Run) -> str:
    return run.data.tags.get(schema.PHASE, "?")


def _pending_and_chosen(
    spec: GridSpec, finished: dict[str, Run], rows: dict[str, Counter]
) -> dict[str, float]:
    """Adds the pending cells of each phase to `rows`; returns group label -> chosen rate.

    A tune cell is pending until it has a FINISHED run, and so are the cells of rungs of
    successive halving not reached yet (their number is known, their rates are not); the
    final cells of a group whose tuning is not complete are pending too (their rate is not
    known yet), as are those of the chosen rate without a FINISHED run.
    """
    chosen: dict[str, float] = {}
    for group in groups(spec):
        results: list[TuneResult] = []
        while True:  # ask the protocol rung by rung, as the launcher does
            step = protocol_step(spec, group, results)
            known = [cfg for cfg in step.tune if cfg.cell_id in finished]
            if len(known) == len(results):
                break
            results = [TuneResult.from_run(cfg, finished[cfg.cell_id]) for cfg in known]
        planned = sum(n for _, n in tune_rungs(spec, group)) * len(spec.seeds.tune)
        rows["tune"]["pending"] += planned - len(results)
        if step.lr is None:
            rows["final"]["pending"] += len(spec.seeds.final)
            continue
        if step.tune:
            chosen[group.label] = step.lr
        rows["final"]["pending"] += sum(cfg.cell_id not in finished for cfg in step.final)
    return chosen


def _final_rates(cells: list[Run]) -> dict[str, float]:
    """Without a spec: the rate the final runs of each task/attention/optimizer used."""
    rates: dict[str, float] = {}
    for run in cells:
        if run.data.tags.get(schema.PHASE) == "final":
            p = run.data.params
            key = f"{p[schema.TASK]}/{p[schema.ATTENTION]}/{p[schema.OPTIMIZER]}"
            rates[key] = float(p[schema.LR])
    return dict(sorted(rates.items()))
