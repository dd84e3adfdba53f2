"""Grid expansion and the fair-comparison protocol of DESIGN.md.

A `Group` is one fair-comparison unit: task x attention x optimizer x sweep point. Under
protocol `tune_then_final` each group first runs a `tune` phase (its optimizer's own learning
rate grid x the tune seeds), `choose_lr` picks the best rate by the final validation metric, and
a `final` phase runs every final seed at that rate. Under `fixed` only the final phase runs, at
each optimizer entry's `lr`. Everything here is pure: it builds `RunConfig`s, it trains nothing.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.config import RunConfig, resolve
from harness.spec import GridSpec, combination_overrides, entry_steps


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
        """e.g. "copy/multihead/adam model.d_k=32"."""
        point = "".join(f" {key}={value}" for key, value in self.sweep.items())
        return f"{self.task}/{self.attention}/{self.optimizer}{point}"


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


def plan(spec: GridSpec) -> Plan:
    """Cell and step counts per phase; final steps do not depend on the rate tuning picks."""
    tune: list[RunConfig] = []
    final: list[RunConfig] = []
    all_groups = groups(spec)
    for group in all_groups:
        tune += tune_cells(spec, group)
        final += final_cells(spec, group, group.fixed_lr)
    return Plan(
        protocol=spec.protocol,
        groups=len(all_groups),
        tune_cells=len(tune),
        final_cells=len(final),
        tune_steps=sum(cfg.steps for cfg in tune),
        final_steps=sum(cfg.steps for cfg in final),
    )


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
