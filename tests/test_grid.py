"""Grid expansion, the two protocols, and the learning-rate choice of the tune phase."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness import schema
from harness.config import RunConfig
from harness.grid import (
    Group,
    Plan,
    TuneResult,
    choose_lr,
    final_cells,
    groups,
    plan,
    plan_json,
    planned_cells,
    protocol_step,
    tune_cells,
    tune_rungs,
)
from harness.optim import OPTIMIZERS
from harness.spec import GridSpec, Tuning, grid_from_dict, load_grid
from tasks import TASKS, get_task

GRIDS = Path(__file__).resolve().parent.parent / "grids"


def _spec(**changes: Any) -> GridSpec:
    data: dict[str, Any] = {
        "name": "t",
        "tasks": ["copy", {"name": "reverse", "params": {"length": 6}}],
        "attention": ["dot", "scaled_dot", {"name": "multihead", "params": {"n_heads": 2}}],
        "optimizers": ["adam", {"name": "sgd", "lr": 0.05, "lr_grid": [0.01, 0.1, 1.0]}],
        "seeds": {"tune": [0, 1], "final": [2, 3, 4]},
    }
    return grid_from_dict(data | changes)


def _all_cells(spec: GridSpec) -> list[Any]:
    cells = []
    for group in groups(spec):
        cells += tune_cells(spec, group) + final_cells(spec, group, group.fixed_lr)
    return cells


@pytest.mark.parametrize("sweep", [{}, {"model.d_k": [8, 32]}])
def test_tune_then_final_counts(sweep: dict[str, list[int]]) -> None:
    spec = _spec(sweep=sweep)
    points = 2 if sweep else 1
    n_groups = 2 * 3 * 2 * points
    assert len(groups(spec)) == n_groups
    # adam: the registry's 5 rates; sgd: the 3 given. Half the groups each, 2 tune seeds.
    n_tune = (n_groups // 2) * (len(OPTIMIZERS["adam"].lr_grid) + 3) * 2
    p = plan(spec)
    assert p == Plan(
        protocol="tune_then_final",
        groups=n_groups,
        tune_cells=n_tune,
        final_cells=n_groups * 3,
        tune_steps=n_tune * 1000,  # copy and reverse: default_steps 1000
        final_steps=n_groups * 3 * 1000,
        tune_steps_exhaustive=n_tune * 1000,
    )
    assert sum(len(tune_cells(spec, g)) for g in groups(spec)) == n_tune
    assert p.cells == n_tune + n_groups * 3 and p.steps == p.tune_steps + p.final_steps


def test_fixed_protocol_runs_only_final_cells_at_fixed_lr() -> None:
    spec = _spec(protocol="fixed", sweep={"model.d_k": [8, 32]})
    all_groups = groups(spec)
    assert len(all_groups) == 24
    assert all(tune_cells(spec, g) == [] for g in all_groups)
    p = plan(spec)
    assert (p.groups, p.tune_cells, p.final_cells, p.tune_steps) == (24, 0, 72, 0)
    lrs = {g.optimizer: g.fixed_lr for g in all_groups}
    assert lrs == {"adam": OPTIMIZERS["adam"].default_lr, "sgd": 0.05}
    cells = final_cells(spec, all_groups[0], all_groups[0].fixed_lr)
    assert [(c.lr, c.seed, c.phase) for c in cells] == [(1e-3, s, "final") for s in (2, 3, 4)]


def test_groups_are_distinct_hashable_keys() -> None:
    # Two entries of one task that differ only in params, and a sweep: hashes may collide,
    # equality must not.
    tasks = ["copy", {"name": "copy", "params": {"length": 4}}]
    all_groups = groups(_spec(tasks=tasks, sweep={"model.d_k": [8, 32]}))
    assert len({g: i for i, g in enumerate(all_groups)}) == len(all_groups) == 24
    assert all_groups[0] != all_groups[12] and all_groups[0].label == all_groups[12].label


def test_groups_order_and_labels() -> None:
    spec = _spec(sweep={"model.d_k": [8, 32]})
    labels = [g.label for g in groups(spec)]
    assert labels[:4] == [
        "copy/dot/adam model.d_k=8",
        "copy/dot/adam model.d_k=32",
        "copy/dot/sgd model.d_k=8",
        "copy/dot/sgd model.d_k=32",
    ]
    assert labels[4] == "copy/scaled_dot/adam model.d_k=8"
    assert labels[-1] == "reverse/multihead/sgd model.d_k=32"
    assert groups(_spec())[0].label == "copy/dot/adam"


def test_tune_cells_cover_grid_times_tune_seeds() -> None:
    spec = _spec()
    sgd = next(g for g in groups(spec) if g.optimizer == "sgd")
    cells = tune_cells(spec, sgd)
    assert [(c.lr, c.seed) for c in cells] == [
        (lr, seed) for lr in (0.01, 0.1, 1.0) for seed in (0, 1)
    ]
    assert {c.phase for c in cells} == {"tune"}


def test_cell_ids_are_distinct() -> None:
    dk_scaling = load_grid(GRIDS / "dk_scaling.yaml")  # every tune cell: tuned exhaustively
    dk_scaling = dk_scaling.model_copy(update={"tuning": Tuning()})
    for spec in (_spec(sweep={"model.d_k": [8, 32]}), dk_scaling):
        ids = [c.cell_id for c in _all_cells(spec)]
        assert len(ids) == len(set(ids)) == plan(spec).cells


def test_overrides_reach_the_run_config() -> None:
    spec = _spec(
        model={"d_model": 32},
        train={"batch_size": 16},
        budget={"val_every": 25},
        sweep={"model.d_k": [8, 32]},
        optimizers=[{"name": "sgd", "params": {"nesterov": True}}],
    )
    group = groups(spec)[-1]  # reverse (length 6) / multihead (2 heads) / sgd, d_k 32
    assert group.sweep == {"model.d_k": 32}
    assert group.overrides == {
        "task.length": 6,
        "attention.n_heads": 2,
        "optim.nesterov": True,
        "model.d_model": 32,
        "train.batch_size": 16,
        "train.val_every": 25,
        "model.d_k": 32,
    }
    for cfg in tune_cells(spec, group) + final_cells(spec, group, 0.3):
        assert cfg.model["d_k"] == 32 and cfg.model["d_model"] == 32
        assert cfg.task_params["length"] == 6
        assert cfg.attention_params["n_heads"] == 2
        assert cfg.optim["nesterov"] is True
        assert cfg.train["val_every"] == 25 and cfg.train["batch_size"] == 16
    assert final_cells(spec, group, 0.3)[0].lr == 0.3


def test_steps_precedence_entry_then_budget_then_task_default() -> None:
    tasks = [{"name": "copy", "steps": 70}, "assoc_recall"]
    with_budget = _spec(tasks=tasks, budget={"steps": 40})
    without = _spec(tasks=tasks)
    steps = {g.task: g.steps for g in groups(with_budget)}
    assert steps == {"copy": 70, "assoc_recall": 40}
    assert {g.task: g.steps for g in groups(without)} == {"copy": 70, "assoc_recall": None}
    resolved = {g.task: final_cells(without, g, g.fixed_lr)[0].steps for g in groups(without)}
    assert resolved == {"copy": 70, "assoc_recall": TASKS["assoc_recall"].default_steps}
    assert {c.steps for g in groups(with_budget) for c in tune_cells(with_budget, g)} == {70, 40}


def test_group_carries_the_optimizer_grid() -> None:
    by_opt = {g.optimizer: g for g in groups(_spec())}
    assert isinstance(by_opt["adam"], Group)
    assert by_opt["adam"].lr_grid == OPTIMIZERS["adam"].lr_grid
    assert by_opt["sgd"].lr_grid == (0.01, 0.1, 1.0)


def _results(values: dict[float, list[float | None]]) -> list[TuneResult]:
    return [
        TuneResult(lr, seed, 100, value)
        for lr, seeds in values.items()
        for seed, value in enumerate(seeds)
    ]


def test_choose_lr_best_mean_for_accuracy_and_for_bpc() -> None:
    results = _results({1e-3: [0.5, 0.7], 1e-2: [0.9, 0.4], 1e-1: [0.2, 0.3]})
    # means: 0.6, 0.65, 0.25
    assert choose_lr(results, higher_is_better=True) == 1e-2
    assert choose_lr(results, higher_is_better=False) == 1e-1


def test_a_diverged_lr_never_wins_over_a_finite_one() -> None:
    results = _results({1e-1: [0.99, float("nan")], 1e-2: [0.99, None], 1e-3: [0.1, 0.1]})
    assert choose_lr(results, higher_is_better=True) == 1e-3
    bpc = _results({1e-2: [float("inf"), float("inf")], 1e-3: [None, 2.0]})
    assert choose_lr(bpc, higher_is_better=False) == 1e-3  # inf counts as diverged


def test_ties_go_to_the_first_lr_in_order() -> None:
    results = _results({3e-3: [0.5, 0.7], 1e-3: [0.7, 0.5], 1e-2: [0.1, 0.2]})
    assert choose_lr(results, higher_is_better=True) == 3e-3
    assert choose_lr(list(reversed(results)), higher_is_better=True) == 1e-3


def test_ties_of_the_metric_go_to_the_lower_mean_validation_loss() -> None:
    # Both rates saturate at accuracy 1.0 on every tune seed; 1e-2 has the lower mean loss.
    results = [
        TuneResult(1e-3, 0, 100, 1.0, 0.30),
        TuneResult(1e-3, 1, 100, 1.0, 0.10),
        TuneResult(1e-2, 0, 100, 1.0, 0.05),
        TuneResult(1e-2, 1, 100, 1.0, 0.25),
        TuneResult(1e-1, 0, 100, 0.9, 0.01),
        TuneResult(1e-1, 1, 100, 0.9, 0.01),
    ]
    assert choose_lr(results, higher_is_better=True) == 1e-2  # mean loss 0.15 < 0.20
    # The metric decides first: the lowest loss does not win at a worse accuracy.
    assert choose_lr(results[:2] + results[4:], higher_is_better=True) == 1e-3


def test_several_tune_seeds_choose_by_their_mean() -> None:
    # One lucky seed does not decide: 1e-3 wins on seed 0 alone, 1e-2 on the mean of three.
    results = _results({1e-3: [0.9, 0.5, 0.5], 1e-2: [0.8, 0.8, 0.8]})
    assert choose_lr(results[:1] + results[3:4], higher_is_better=True) == 1e-3
    assert choose_lr(results, higher_is_better=True) == 1e-2


def test_all_diverged_picks_fewest_diverged_then_first() -> None:
    results = _results({1e-3: [None, None], 1e-2: [0.9, None], 1e-1: [None, 0.1]})
    assert choose_lr(results, higher_is_better=True) == 1e-2
    assert choose_lr(_results({1.0: [None], 0.1: [None]}), higher_is_better=False) == 1.0


def test_choose_lr_without_results() -> None:
    assert choose_lr([], higher_is_better=True) is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("quick", (4, 4 * 3, 4 * 8)),
        # successive halving: 5 rates, then 2 (sgd: 7, then 3)
        ("full", (80, 60 * (5 + 2) + 20 * (7 + 3), 240)),
        ("dk_scaling", (32, 16 * (5 + 2) + 16 * (7 + 3), 96)),
    ],
)
def test_shipped_grid_plans(name: str, expected: tuple[int, int, int]) -> None:
    p = plan(load_grid(GRIDS / f"{name}.yaml"))
    assert (p.groups, p.tune_cells, p.final_cells) == expected


def test_shipped_halving_grids_tune_in_at_most_40_percent_of_exhaustive_steps() -> None:
    halving = [
        s for s in map(load_grid, sorted(GRIDS.glob("*.yaml"))) if s.tuning.scheduler == "halving"
    ]
    assert halving  # full.yaml at least
    for spec in halving:
        p = plan(spec)
        assert 0 < p.tune_steps <= 0.4 * p.tune_steps_exhaustive, spec.name


# --------------------------------------------------------------------------- protocol_step


def _tuned_group(spec: GridSpec) -> Group:
    return next(g for g in groups(spec) if g.optimizer == "sgd")  # rates 0.01, 0.1, 1.0


def _score(cfg: RunConfig) -> TuneResult:
    """A made-up tune result: 0.1 is the best rate, every seed agrees."""
    value = {0.01: 0.5, 0.1: 0.9, 1.0: 0.2}[cfg.lr] + cfg.seed / 100
    return TuneResult(cfg.lr, cfg.seed, cfg.steps, value, 1.0 - cfg.lr / 10)


def test_protocol_step_waits_for_every_tune_cell_then_gives_the_final_cells() -> None:
    spec = _spec()
    group = _tuned_group(spec)
    results = [_score(cfg) for cfg in tune_cells(spec, group)]
    for n in range(len(results)):  # any incomplete set of results: nothing to run yet
        assert protocol_step(spec, group, results[:n])[:2] == (None, [])
        assert protocol_step(spec, group, results[n + 1 :] + results[:n])[:2] == (None, [])
    lr, finals, _ = protocol_step(spec, group, results)
    higher = get_task(group.task).higher_is_better
    assert lr == choose_lr(results, higher)
    assert lr == (0.1 if higher else 1.0)
    assert [c.cell_id for c in finals] == [c.cell_id for c in final_cells(spec, group, lr)]
    assert {(c.phase, c.lr) for c in finals} == {("final", lr)}
    assert [c.seed for c in finals] == list(spec.seeds.final)


def test_protocol_step_does_not_depend_on_the_order_results_arrive_in() -> None:
    spec = _spec()
    group = _tuned_group(spec)
    # 0.01 and 1.0 tie on the metric and the loss: the rate listed first in the grid wins.
    tied = [TuneResult(cfg.lr, cfg.seed, cfg.steps, 0.5 if cfg.lr != 0.1 else 0.1, 0.3)
            for cfg in tune_cells(spec, group)]  # fmt: skip
    higher = get_task(group.task).higher_is_better
    expected = 0.01 if higher else 0.1
    for shift in range(len(tied)):
        assert protocol_step(spec, group, tied[shift:] + tied[:shift])[0] == expected
        assert protocol_step(spec, group, list(reversed(tied[shift:] + tied[:shift])))[0] == (
            expected
        )


def test_protocol_step_ignores_foreign_results_and_counts_the_later_of_two() -> None:
    spec = _spec()
    group = _tuned_group(spec)
    results = [_score(cfg) for cfg in tune_cells(spec, group)]
    foreign = [TuneResult(0.5, 0, 100, 1.0), TuneResult(0.1, 99, 100, 1.0)]  # no such rate / seed
    assert protocol_step(spec, group, results[:-1] + foreign)[:2] == (None, [])
    assert protocol_step(spec, group, foreign + results) == protocol_step(spec, group, results)
    # a cell that diverged and was run again: its later result counts
    best = protocol_step(spec, group, results)[0]
    again = [r for r in results if r.lr == best]
    diverged = [TuneResult(r.lr, r.seed, r.steps, None) for r in again]
    assert protocol_step(spec, group, results + diverged)[0] != best
    assert protocol_step(spec, group, results + diverged + again)[0] == best


def test_protocol_step_under_fixed_gives_the_entry_rate_at_once() -> None:
    spec = _spec(protocol="fixed")
    for group in groups(spec):
        lr, finals, _ = protocol_step(spec, group, [])
        assert lr == group.fixed_lr
        assert [c.cell_id for c in finals] == [
            c.cell_id for c in final_cells(spec, group, group.fixed_lr)
        ]
        assert protocol_step(spec, group, [TuneResult(1.0, 0, 100, 0.9)])[:2] == (lr, finals)


@pytest.mark.parametrize("protocol", ["tune_then_final", "fixed", "halving"])
def test_plan_counts_and_plan_json_come_from_one_list(protocol: str) -> None:
    halving = {"tuning": {"scheduler": "halving"}} if protocol == "halving" else {}
    protocol = "tune_then_final" if halving else protocol
    spec = _spec(protocol=protocol, sweep={"model.d_k": [8, 32]}, **halving)
    cells, rows, p = planned_cells(spec), plan_json(spec), plan(spec)
    assert len(cells) == len(rows) == p.cells
    assert sum(row["phase"] == "tune" for row in rows) == p.tune_cells
    assert sum(c.cfg.steps for c in cells if c.cfg.phase == "final") == p.final_steps
    assert sum(row["steps"] for row in rows if row["phase"] == "tune") == p.tune_steps
    first_rung = {cfg.cell_id for g in groups(spec) for cfg in tune_cells(spec, g)}
    for cell, row in zip(cells, rows, strict=True):
        assert row["group"] == cell.group.label and row["seed"] == cell.cfg.seed
        # a final cell of a tuned group has no rate, id or run name until tuning picks one,
        # and neither has a tune cell after the first rung of successive halving
        unknown = protocol == "tune_then_final" and row["phase"] == "final"
        unknown |= row["phase"] == "tune" and cell.cfg.cell_id not in first_rung
        assert (row["lr"] is None, row["cell_id"] is None, row["run_name"] is None) == (
            unknown, unknown, unknown,
        )  # fmt: skip
        if not unknown:
            assert (row["lr"], row["cell_id"]) == (cell.cfg.lr, cell.cfg.cell_id)


def test_group_labels_are_the_schema_s() -> None:
    spec = _spec(sweep={"model.d_k": [8, 32], "model.d_model": [32]})
    for group in groups(spec):
        assert group.label == schema.group_label(
            group.task, group.attention, group.optimizer, group.sweep
        )


# --------------------------------------------------------------------------- halving


@pytest.mark.parametrize(
    ("rates", "steps", "eta", "rungs", "expected"),
    [
        (5, 900, 3, 3, [(100, 5), (300, 2)]),  # 2 left after rung 1: ceil(2/3) = 1 is chosen
        (9, 900, 3, 3, [(100, 9), (300, 3)]),
        (10, 900, 3, 3, [(100, 10), (300, 4), (900, 2)]),
        (7, 1000, 3, 3, [(112, 7), (334, 3)]),  # budgets round up
        (8, 800, 2, 4, [(100, 8), (200, 4), (400, 2)]),
        (4, 2, 3, 3, [(1, 4), (2, 2)]),  # budgets that round alike are one rung
        (1, 900, 3, 3, [(100, 1)]),  # one rate: one short run, then it is chosen
        (5, 900, 3, 1, [(900, 5)]),  # one rung is exhaustive tuning
    ],
)
def test_halving_rungs(rates: int, steps: int, eta: int, rungs: int, expected: list) -> None:
    grid = [10.0 ** (-k) for k in range(rates)]
    spec = _spec(
        tasks=[{"name": "copy", "steps": steps}],
        optimizers=[{"name": "adam", "lr_grid": grid}],
        tuning={"scheduler": "halving", "eta": eta, "rungs": rungs},
    )
    group = groups(spec)[0]
    assert tune_rungs(spec, group) == expected
    exhaustive = _spec(tasks=[{"name": "copy", "steps": steps}],
                       optimizers=[{"name": "adam", "lr_grid": grid}])  # fmt: skip
    assert tune_rungs(exhaustive, groups(exhaustive)[0]) == [(steps, rates)]


def test_halving_keeps_the_best_by_the_protocols_ranking_whatever_the_order() -> None:
    """Rung 0 of 7 rates keeps ceil(7/3) = 3: a diverged rate never, a tie of the metric
    by the lower loss, then the grid's order; rung 1 then decides alone."""
    grid = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
    spec = _spec(
        tasks=[{"name": "copy", "steps": 90}],
        optimizers=[{"name": "sgd", "lr_grid": grid}],
        seeds={"tune": [0, 1], "final": [2]},
        tuning={"scheduler": "halving"},
    )
    group = groups(spec)[0]
    metric = {1e-3: 0.2, 3e-3: 0.6, 1e-2: 0.6, 3e-2: 0.6, 1e-1: 0.6, 3e-1: 0.9, 1.0: 0.95}
    loss = {3e-3: 0.5, 1e-2: 0.4, 3e-2: 0.4, 1e-1: 0.4}  # 1e-2 .. 1e-1 tie on both at 0.4

    def result(cfg: RunConfig) -> TuneResult:
        if cfg.lr == 1.0 and cfg.seed == 1:  # the best mean on seed 0, but it diverged
            return TuneResult(cfg.lr, cfg.seed, cfg.steps, None)
        return TuneResult(cfg.lr, cfg.seed, cfg.steps, metric[cfg.lr], loss.get(cfg.lr, 0.9))

    rung0 = [result(cfg) for cfg in tune_cells(spec, group)]
    for shift in range(len(rung0)):
        order = rung0[shift:] + rung0[:shift]
        step = protocol_step(spec, group, order)
        assert step.lr is None and step.final == []
        assert [c.lr for c in step.tune[len(rung0) :]] == [1e-2, 1e-2, 3e-2, 3e-2, 3e-1, 3e-1]
        assert {c.steps for c in step.tune[len(rung0) :]} == {30}
    rung1 = [TuneResult(c.lr, c.seed, c.steps, {1e-2: 0.7, 3e-2: 0.8, 3e-1: 0.75}[c.lr], 0.1)
             for c in step.tune[len(rung0) :]]  # fmt: skip
    step = protocol_step(spec, group, rung1 + rung0)
    assert step.lr == 3e-2  # best at 30 steps, though 3e-1 led at 10
    assert [c.lr for c in step.final] == [3e-2]
    # A result at a budget the protocol did not ask for counts for nothing.
    stray = [TuneResult(r.lr, r.seed, 90, 1.0, 0.0) for r in rung1]
    assert protocol_step(spec, group, rung0 + stray).lr is None
