"""Grid expansion, the fair-comparison protocol of DESIGN.md, and the plan of a grid.

A `Group` is one fair-comparison unit: task x attention x optimizer x sweep point. Under
protocol `tune_then_final` each group first runs a `tune` phase (its optimizer's own learning
rate grid x the tune seeds), `choose_lr` picks the best rate by the final validation metric, and
a `final` phase runs every final seed at that rate. Under `fixed` only the final phase runs, at
each optimizer entry's `lr`.

`protocol_step` is the protocol written once: the tune results known so far in, the chosen
rate and the final cells out. The launcher calls it each time a tune cell ends, `harness status`
with what the store holds, and `planned_cells` (the plan of `--dry-run` and of plan.json) with no
results at all. Everything here is pure: it builds `RunConfig`s, it trains and stores nothing.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.config import RunConfig, resolve
from harness.spec import GridSpec, combination_overrides, entry_steps
from tasks import get_task


@dataclass(frozen=True)
class Group:
    """One task x attention x optimizer x sweep point; `overrides` are dotted keys for resolve().

    Hashable (a dict key per group): the two mappings are compared but left out of the hash.
    """

    task: str
    attention: str
    optimizer: str
    sweep: Mapping[str, Any] = field(hash=False)  # this group's sweep point, {} without a sweep
    overrides: Mapping[str, Any] = field(hash=False)
    steps: int | None  # None: the task's default_steps
    lr_grid: tuple[float, ...]  # tried in the tune phase
    fixed_lr: float  # used by protocol `fixed`

    @property
    def label(self) -> str:
        """e.g. "copy/multihead/adam model.d_k=32" (schema.group_label, as the report names it)."""
        from harness import schema  # imports MLflow, which writes ~/.config: not for a bad grid

        return schema.group_label(self.task, self.attention, self.optimizer, self.sweep)


@dataclass(frozen=True)
class Plan:
    """What a grid will run, known before any run: for `harness run --dry-run`."""

    protocol: str
    groups: int
    tune_cells: int
    final_cells: int
    tune_steps: int  # training steps summed over the cells of the phase
    final_steps: int

    @property
    def cells(self) -> int:
        return self.tune_cells + self.final_cells

    @property
    def steps(self) -> int:
        return self.tune_steps + self.final_steps


@dataclass(frozen=True)
class TuneResult:
    lr: float
    seed: int
    value: float | None  # final validation metric; None when the run diverged or failed
    loss: float | None = None  # final validation loss: breaks ties of `value`

    @classmethod
    def from_run(cls, cfg: RunConfig, run: Any) -> TuneResult:
        """A FINISHED tune run (an MLflow `Run`) read back: its last validation value of the
        metric its own tag names, None unless its outcome was ok."""
        from harness import schema

        tags, metrics = run.data.tags, run.data.metrics
        value = metrics.get(schema.val_metric(tags.get(schema.METRIC, "")))
        if tags.get(schema.OUTCOME) != "ok":
            value = None
        return cls(cfg.lr, cfg.seed, value, metrics.get(schema.VAL_LOSS))


@dataclass(frozen=True)
class PlannedCell:
    """One cell a grid asks for, known before any run. A final cell of a tuned group has no
    rate until tuning picks one (`known` False): its `cfg` stands in at the group's fixed_lr,
    which gives its seed and steps but not its rate, cell id or run name."""

    group: Group
    cfg: RunConfig
    known: bool


def groups(spec: GridSpec) -> list[Group]:
    """Every group, ordered by task, then attention, then optimizer, then sweep point."""
    out: list[Group] = []
    indices = (range(len(spec.tasks)), range(len(spec.attention)), range(len(spec.optimizers)))
    for t, a, o in itertools.product(*indices):
        optimizer = spec.optimizers[o]
        for point in spec.sweep_points():
            overrides = combination_overrides(spec, t, a, o, point)
            out.append(
                Group(
                    task=spec.tasks[t].name,
                    attention=spec.attention[a].name,
                    optimizer=optimizer.name,
                    sweep=dict(point),
                    overrides={key: item.value for key, item in overrides.items()},
                    steps=entry_steps(spec, t),
                    lr_grid=optimizer.tune_lrs,
                    fixed_lr=optimizer.fixed_lr,
                )
            )
    return out


def tune_cells(spec: GridSpec, group: Group) -> list[RunConfig]:
    """The tune phase: every rate of the group's grid x every tune seed; [] for `fixed`."""
    if spec.protocol == "fixed":
        return []
    return [
        _cell(group, "tune", lr, seed)
        for lr, seed in itertools.product(group.lr_grid, spec.seeds.tune)
    ]


def final_cells(spec: GridSpec, group: Group, lr: float) -> list[RunConfig]:
    """The final phase: every final seed at `lr` (the chosen rate, or `fixed_lr`)."""
    return [_cell(group, "final", lr, seed) for seed in spec.seeds.final]


def protocol_step(
    spec: GridSpec, group: Group, tune_results: Sequence[TuneResult]
) -> tuple[float | None, list[RunConfig]]:
    """The protocol for one group: the tune results known so far in, (rate, final cells) out.

    `fixed`: the entry's rate and its final cells, whatever the results. `tune_then_final`:
    (None, []) until every tune cell (rate x tune seed) has a result (a diverged one has value
    None; a failed or lost cell has none until it runs again); then the rate `choose_lr`
    picks and the final cells at it. Results are put in the grid's order first (ties go to
    the rate listed first), whatever order they came in; a result for a cell the group does
    not have is ignored, and of two for one cell the later counts.
    """
    tune = tune_cells(spec, group)
    if not tune:
        return group.fixed_lr, final_cells(spec, group, group.fixed_lr)
    by_cell = {(result.lr, result.seed): result for result in tune_results}
    if any((cfg.lr, cfg.seed) not in by_cell for cfg in tune):
        return None, []
    ordered = [by_cell[(cfg.lr, cfg.seed)] for cfg in tune]
    lr = choose_lr(ordered, get_task(group.task).higher_is_better)
    assert lr is not None  # every tune cell has a result, and a group has at least one
    return lr, final_cells(spec, group, lr)


def planned_cells(spec: GridSpec) -> list[PlannedCell]:
    """Every cell the grid asks for, group by group, tune cells before final ones."""
    cells: list[PlannedCell] = []
    for group in groups(spec):
        lr, finals = protocol_step(spec, group, [])  # a rate only where nothing is tuned
        known = lr is not None
        if not known:
            finals = final_cells(spec, group, group.fixed_lr)
        cells += [PlannedCell(group, cfg, True) for cfg in tune_cells(spec, group)]
        cells += [PlannedCell(group, cfg, known) for cfg in finals]
    return cells


def plan(spec: GridSpec) -> Plan:
    """Cell and step counts per phase; final steps do not depend on the rate tuning picks."""
    cells = planned_cells(spec)
    tune = [c.cfg for c in cells if c.cfg.phase == "tune"]
    final = [c.cfg for c in cells if c.cfg.phase == "final"]
    return Plan(
        protocol=spec.protocol,
        groups=len(groups(spec)),
        tune_cells=len(tune),
        final_cells=len(final),
        tune_steps=sum(cfg.steps for cfg in tune),
        final_steps=sum(cfg.steps for cfg in final),
    )


def plan_json(spec: GridSpec) -> list[dict[str, Any]]:
    """The plan as the grid's parent run records it (schema.PLAN_JSON), so that a report can
    list missing cells without the training code. A final cell whose rate tuning has yet to
    pick is known by group, phase and seed; its lr, cell_id and run_name are null."""
    return [
        {
            "group": c.group.label,
            "task": c.group.task,
            "attention": c.group.attention,
            "optimizer": c.group.optimizer,
            "sweep": dict(c.group.sweep),
            "phase": c.cfg.phase,
            "seed": c.cfg.seed,
            "lr": c.cfg.lr if c.known else None,
            "cell_id": c.cfg.cell_id if c.known else None,
            "run_name": c.cfg.run_name if c.known else None,
        }
        for c in planned_cells(spec)
    ]


def choose_lr(results: list[TuneResult], higher_is_better: bool) -> float | None:
    """The rate with the best mean validation metric over its tune seeds; None without results.

    Ties of the mean metric (common on saturating tasks and small validation sets) go to the
    lower mean validation loss, then to the rate seen first in `results` (the grid order). A
    rate with any diverged or failed seed (value None, NaN or infinite) ranks below every rate
    whose seeds all finished. If every rate has a diverged seed, the one with the fewest
    diverged seeds wins (then grid order): the final phase still runs at it and records what
    happens.
    """
    values: dict[float, list[float]] = {}
    losses: dict[float, list[float]] = {}
    diverged: dict[float, int] = {}
    for result in results:
        values.setdefault(result.lr, [])
        losses.setdefault(result.lr, [])
        diverged.setdefault(result.lr, 0)
        if result.value is None or not math.isfinite(result.value):
            diverged[result.lr] += 1
        else:
            values[result.lr].append(result.value)
            finite = result.loss is not None and math.isfinite(result.loss)
            losses[result.lr].append(result.loss if finite else math.inf)
    finished = [lr for lr in values if diverged[lr] == 0]
    if not finished:
        return min(diverged, key=diverged.__getitem__, default=None)
    sign = 1.0 if higher_is_better else -1.0
    score = {lr: sign * _mean(values[lr]) for lr in finished}
    best = max(score.values())
    tied = [lr for lr in finished if math.isclose(score[lr], best, rel_tol=1e-12, abs_tol=1e-12)]
    return min(tied, key=lambda lr: _mean(losses[lr]))  # min keeps the first of equal losses


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values) if values else math.inf


def _cell(group: Group, phase: str, lr: float, seed: int) -> RunConfig:
    return resolve(
        group.task,
        group.attention,
        group.optimizer,
        lr=lr,
        seed=seed,
        steps=group.steps,
        phase=phase,
        overrides=group.overrides,
    )
