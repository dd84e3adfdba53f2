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
from typing import Any, NamedTuple

from harness.config import RunConfig, resolve
from harness.spec import GridSpec, Tuning, combination_overrides, entry_steps
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
    tune_steps_exhaustive: int = 0  # what the tune phase would take with every rate at full steps

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
    steps: int  # the cell's budget: which rung of successive halving it belongs to
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
        return cls(cfg.lr, cfg.seed, cfg.steps, value, metrics.get(schema.VAL_LOSS))


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


def tune_rungs(spec: GridSpec, group: Group) -> list[tuple[int, int]]:
    """(steps, rates) of each rung the tune phase runs, known before any result; [] for `fixed`.

    Exhaustive tuning is one rung: every rate at the full budget S. Successive halving runs
    rung k at S / eta^(rungs-1-k) steps (rounded up) with ceil(n_(k-1) / eta) rates, the best
    of the rung before; it stops before a rung that would have one rate (that rate is chosen),
    and after the full budget. Rungs whose budgets round to the same steps are merged.
    """
    if spec.protocol == "fixed":
        return []
    full = _cell(group, "tune", group.lr_grid[0], spec.seeds.tune[0]).steps
    n = len(group.lr_grid)
    if spec.tuning.scheduler == "exhaustive":
        return [(full, n)]
    eta, rungs = spec.tuning.eta, spec.tuning.rungs
    budgets = sorted({math.ceil(full / eta ** (rungs - 1 - k)) for k in range(rungs)})
    out: list[tuple[int, int]] = []
    for steps in budgets:
        if out and n == 1:
            break
        out.append((steps, n))
        n = math.ceil(n / eta)
    return out


def tune_cells(spec: GridSpec, group: Group) -> list[RunConfig]:
    """The first rung of the tune phase: every rate of the group's grid x every tune seed (the
    whole tune phase under exhaustive tuning); [] for `fixed`. Later rungs' rates come from
    `protocol_step`."""
    rungs = tune_rungs(spec, group)
    if not rungs:
        return []
    return rung_cells(spec, group, group.lr_grid, rungs[0][0])


def final_cells(spec: GridSpec, group: Group, lr: float) -> list[RunConfig]:
    """The final phase: every final seed at `lr` (the chosen rate, or `fixed_lr`)."""
    return [_cell(group, "final", lr, seed) for seed in spec.seeds.final]


class Step(NamedTuple):
    """What the protocol asks of one group, given the tune results known so far."""

    lr: float | None  # the chosen rate; None while tuning goes on
    final: list[RunConfig]  # the final cells at `lr`; [] while it is None
    tune: list[RunConfig]  # every tune cell asked for so far, rung by rung


def protocol_step(spec: GridSpec, group: Group, tune_results: Sequence[TuneResult]) -> Step:
    """The protocol for one group: the tune results known so far in, what to run next out.

    `fixed`: the entry's rate and its final cells, whatever the results. `tune_then_final`:
    the cells of each rung (`tune_rungs`) whose rung before is complete; once the last rung
    has a result for every cell (a diverged one has value None; a failed or lost cell has none
    until it runs again), the rate `rank_rates` puts first and the final cells at it. The
    rates that go on to the next rung are the best ceil(n/eta) by the same ranking. Results
    are put in the grid's order first (ties go to the rate listed first), whatever order they
    came in; a result for a cell the group does not have is ignored, and of two for one cell
    the later counts.
    """
    rungs = tune_rungs(spec, group)
    if not rungs:
        return Step(group.fixed_lr, final_cells(spec, group, group.fixed_lr), [])
    by_cell = {(result.lr, result.seed, result.steps): result for result in tune_results}
    higher_is_better = get_task(group.task).higher_is_better
    rates, asked = list(group.lr_grid), []
    for k, (steps, n) in enumerate(rungs):
        cells = rung_cells(spec, group, rates[:n], steps)
        asked += cells
        if any((cfg.lr, cfg.seed, cfg.steps) not in by_cell for cfg in cells):
            return Step(None, [], asked)
        ranked = rank_rates([by_cell[(c.lr, c.seed, c.steps)] for c in cells], higher_is_better)
        if k + 1 < len(rungs):  # the survivors, in the grid's order (for its tie-break)
            keep = set(ranked[: rungs[k + 1][1]])
            rates = [lr for lr in rates if lr in keep]
    lr = ranked[0]  # the best of the last rung run (the one rate left, or the full budget's)
    return Step(lr, final_cells(spec, group, lr), asked)


def planned_cells(spec: GridSpec) -> list[PlannedCell]:
    """Every cell the grid asks for, group by group, tune cells before final ones. Tune cells
    after the first rung and the final cells of a tuned group are not `known`: their rates
    come from the results."""
    cells: list[PlannedCell] = []
    for group in groups(spec):
        step = protocol_step(spec, group, [])
        known = step.lr is not None
        finals = step.final if known else final_cells(spec, group, group.fixed_lr)
        for k, (steps, n) in enumerate(tune_rungs(spec, group)):
            rung = rung_cells(spec, group, group.lr_grid[:n], steps)
            cells += [PlannedCell(group, cfg, k == 0) for cfg in rung]
        cells += [PlannedCell(group, cfg, known) for cfg in finals]
    return cells


def plan(spec: GridSpec) -> Plan:
    """Cell and step counts per phase. They do not depend on the results: successive halving
    runs a fixed number of rates per rung, and final steps do not depend on the rate chosen."""
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
        tune_steps_exhaustive=sum(
            len(group.lr_grid) * len(spec.seeds.tune) * rungs[-1][0]
            for group in groups(spec)
            if (rungs := tune_rungs(spec.model_copy(update={"tuning": Tuning()}), group))
        ),
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
            "steps": c.cfg.steps,
            "lr": c.cfg.lr if c.known else None,
            "cell_id": c.cfg.cell_id if c.known else None,
            "run_name": c.cfg.run_name_at(c.group.sweep) if c.known else None,
        }
        for c in planned_cells(spec)
    ]


def choose_lr(results: list[TuneResult], higher_is_better: bool) -> float | None:
    """The rate `rank_rates` puts first; None without results."""
    ranked = rank_rates(results, higher_is_better)
    return ranked[0] if ranked else None


def rank_rates(results: list[TuneResult], higher_is_better: bool) -> list[float]:
    """Every rate of `results`, best first, by the mean validation metric over its tune seeds.

    Ties of the mean metric (common on saturating tasks and small validation sets) go to the
    lower mean validation loss, then to the rate seen first in `results` (the grid order). A
    rate with any diverged or failed seed (value None, NaN or infinite) ranks below every rate
    whose seeds all finished; among those, fewer diverged seeds rank first (then grid order).
    So when every rate has a diverged seed the final phase still runs at one and records what
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
    sign = 1.0 if higher_is_better else -1.0
    finished = [lr for lr in values if diverged[lr] == 0]
    ranked: list[float] = []
    while finished:  # pick the best of the rest, again and again: ties decided as for the first
        score = {lr: sign * _mean(values[lr]) for lr in finished}
        best = max(score.values())
        tied = [
            lr for lr in finished if math.isclose(score[lr], best, rel_tol=1e-12, abs_tol=1e-12)
        ]
        pick = min(tied, key=lambda lr: _mean(losses[lr]))  # min keeps the first of equal losses
        ranked.append(pick)
        finished.remove(pick)
    others = sorted((lr for lr in values if diverged[lr] > 0), key=diverged.__getitem__)
    return ranked + others


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values) if values else math.inf


def rung_cells(spec: GridSpec, group: Group, rates: Sequence[float], steps: int) -> list[RunConfig]:
    """One rung's cells: each rate x each tune seed, at `steps`."""
    return [
        _cell(group, "tune", lr, seed, steps)
        for lr, seed in itertools.product(rates, spec.seeds.tune)
    ]


def _cell(group: Group, phase: str, lr: float, seed: int, steps: int | None = None) -> RunConfig:
    return resolve(
        group.task,
        group.attention,
        group.optimizer,
        lr=lr,
        seed=seed,
        steps=group.steps if steps is None else steps,
        phase=phase,
        overrides=group.overrides,
    )
