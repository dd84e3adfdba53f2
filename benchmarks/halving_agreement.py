"""Does successive halving choose the learning rate exhaustive tuning chooses, and what does it
cost when it does not?

For every group of a grid, every rate of its grid is trained (on the tune seeds) at every
budget successive halving uses and at the full budget, into an MLflow store (resumable: run
the same command again). Then both schedulers are replayed on those results through the
protocol itself (`harness.grid.protocol_step`, which ignores results it did not ask for):
exhaustive tuning picks from the full-budget runs, halving from its rungs. Per group it prints
both rates, and where they differ the regret: how much worse the halving rate's full-budget
validation metric is than the exhaustive rate's (mean over tune seeds; metric units, positive
= worse). Final seeds are not run: the comparison is of the tuning decision alone.

It trains 1 + 1/eta + 1/eta^2 + ... times the steps of exhaustive tuning, so keep the grid
small; `--tasks` keeps a subset of a grid's tasks.

    .venv/bin/python benchmarks/halving_agreement.py grids/medium.yaml --workers 2
"""

from __future__ import annotations

import argparse
import math
import statistics

from mlflow import MlflowClient
from rich.console import Console

from harness import schema
from harness.grid import Group, TuneResult, groups, protocol_step, rung_cells, tune_rungs
from harness.launch import Launcher
from harness.spec import GridSpec, Tuning, grid_from_dict, load_grid
from harness.train import quiet_libraries
from tasks import get_task


class EveryRung(Launcher):
    """Queues every rate at every budget of halving and at the full budget; no final cells."""

    def __init__(self, *args, halving: GridSpec, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.halving = halving

    def _release(self, group: Group) -> None:
        if group in self.released:
            return
        self.released.add(group)
        budgets = {steps for steps, _ in tune_rungs(self.halving, group)}
        budgets |= {steps for steps, _ in tune_rungs(self.spec, group)}  # the full budget
        for steps in sorted(budgets):
            self._queue(rung_cells(self.spec, group, group.lr_grid, steps), group)


def results_by_group(client: MlflowClient, spec: GridSpec) -> dict[str, list[TuneResult]]:
    """Every finished tune run of the store, as TuneResults per group label."""
    exp = client.get_experiment_by_name(spec.name)
    runs = schema.search_all(client, exp.experiment_id, schema.grid_filter(spec.name))
    out: dict[str, list[TuneResult]] = {}
    for run in schema.finished_by_cell([r for r in runs if schema.is_cell(r)]).values():
        p, tags = run.data.params, run.data.tags
        value = run.data.metrics.get(schema.val_metric(tags.get(schema.METRIC, "")))
        ok = tags.get(schema.OUTCOME) == "ok"
        loss = run.data.metrics.get(schema.VAL_LOSS)
        lr, seed, steps = float(p[schema.LR]), int(p[schema.SEED]), int(p["steps"])
        result = TuneResult(lr, seed, steps, value if ok else None, loss)
        label = schema.group_label(
            p[schema.TASK], p[schema.ATTENTION], p[schema.OPTIMIZER], schema.sweep_of(tags)
        )
        out.setdefault(label, []).append(result)
    return out


def full_budget_value(results: list[TuneResult], lr: float, steps: int) -> float:
    values = [r.value for r in results if r.lr == lr and r.steps == steps]
    if not values or any(v is None or not math.isfinite(v) for v in values):
        return math.nan
    return statistics.fmean(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", help="a grid whose `tuning` is successive halving")
    parser.add_argument("--tasks", nargs="+", help="keep only these tasks of the grid")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tracking-uri", default="sqlite:///halving-agreement.db")
    args = parser.parse_args()
    data = load_grid(args.grid).model_dump(mode="json")
    if args.tasks:
        data["tasks"] = [t for t in data["tasks"] if t["name"] in args.tasks]
    data["name"] = f"{data['name']}-agreement"
    halving = grid_from_dict(data, args.grid)
    if halving.tuning.scheduler != "halving":
        raise SystemExit(f"{args.grid}: tuning.scheduler is not halving")
    exhaustive = halving.model_copy(update={"tuning": Tuning()})
    quiet_libraries()
    client = MlflowClient(args.tracking_uri)
    launcher = EveryRung(exhaustive, client, exhaustive.name, args.workers, "cpu",
                         Console(stderr=True), True, halving=halving)  # fmt: skip
    launcher.prepare()
    launcher.total = len(launcher.pending) + sum(
        c["skipped"] for c in launcher.outcome.counts.values()
    )
    outcome = launcher.run()
    print(f"trained in {outcome.seconds:.0f} s; store: {args.tracking_uri}")

    by_label = results_by_group(client, exhaustive)
    same, regrets = 0, []
    print(f"{'group':<40} {'exhaustive':>10} {'halving':>10} {'regret':>8}")
    for group in groups(halving):
        results = by_label.get(group.label, [])
        lr_exh = protocol_step(exhaustive, group, results).lr
        lr_halv = protocol_step(halving, group, results).lr
        if lr_exh is None or lr_halv is None:
            print(f"{group.label:<40} incomplete: run the same command again")
            continue
        full = tune_rungs(exhaustive, group)[0][0]
        sign = 1.0 if get_task(group.task).higher_is_better else -1.0
        regret = sign * (
            full_budget_value(results, lr_exh, full) - full_budget_value(results, lr_halv, full)
        )
        same += lr_exh == lr_halv
        if lr_exh != lr_halv:
            regrets.append(regret)
        shown = "" if lr_exh == lr_halv else f"{regret:8.4f}"
        print(f"{group.label:<40} {lr_exh:>10g} {lr_halv:>10g} {shown:>8}")
    n = len(groups(halving))
    print(f"same rate in {same} of {n} groups")
    if regrets:
        finite = [r for r in regrets if math.isfinite(r)]
        print(f"where they differ ({len(regrets)}): regret median "
              f"{statistics.median(finite) if finite else math.nan:.4f}, max "
              f"{max(finite) if finite else math.nan:.4f} (full-budget validation metric, "
              f"{len(regrets) - len(finite)} with a diverged run)")  # fmt: skip
    steps_h = sum(s * n_ for g in groups(halving) for s, n_ in tune_rungs(halving, g))
    steps_e = sum(s * n_ for g in groups(halving) for s, n_ in tune_rungs(exhaustive, g))
    print(f"tune steps per tune seed: halving {steps_h:,}, exhaustive {steps_e:,} "
          f"({steps_h / steps_e:.0%})")  # fmt: skip


if __name__ == "__main__":
    main()
