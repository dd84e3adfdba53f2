"""The report's statistics (harness/report/stats.py) on synthetic runs written straight into a
real MLflow store (SQLite in the test's folder) in the run schema, and read back by the report.

No training: each test writes a few dozen runs (params, tags, test/val metrics and the
`test_outcomes.json` artifact, exactly as the training side does) and checks what the report
computes from them, end to end through `build_report` where the issue asks for it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats as st
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from test_report import tables

from harness import schema
from harness.report import build_report, figures, stats
from harness.report.collect import collect
from harness.report.style import Style

N_TEST = 104  # text_cls's old test set: 0.7212 = 75/104


# --------------------------------------------------------------------------- writing runs


@dataclass
class Run:
    """One final run. `correct`: per test example, 1 if right (None: the run diverged)."""

    attention: str
    optimizer: str
    seed: int
    correct: np.ndarray | None
    task: str = "text_cls"
    sweep: dict[str, object] = field(default_factory=dict)
    n_params: int = 10_000
    chance: float | None = 0.25
    outcomes: bool = True  # store test_outcomes.json
    metric: str = "acc"
    attn: dict[str, dict[int, float]] | None = None  # key -> {step: value}
    metric_tags: bool = True  # write harness.metric_label and harness.metric_bounds
    outcomes_format: str = "metric_sum"  # or "correct": the format before metric_sum
    lr: str = "0.001"  # another rate is another cell


# How the training side declares the metrics these runs use: label, bounds, direction, and
# per example what the metric sums, from the 0/1 `correct` and the loss in nats.
METRICS = {
    "acc": ("accuracy", "0,1", True, lambda correct, loss: correct),
    "bpc": ("bits per character", "0,inf", False, lambda correct, loss: loss / math.log(2)),
    "err": ("error rate", "0,1", False, lambda correct, loss: 1 - correct),  # a new metric
}


def write_experiment(
    client: MlflowClient, name: str, runs: list[Run], plan: list[dict] | None = None
) -> None:
    exp_id = client.create_experiment(name)
    parent = client.create_run(exp_id, run_name=name, tags={schema.GRID: name})
    client.log_param(parent.info.run_id, schema.PROTOCOL, "fixed")
    if plan is not None:
        client.log_dict(parent.info.run_id, plan, schema.PLAN_JSON)
    client.set_terminated(parent.info.run_id, "FINISHED")
    for run in runs:
        _write(client, exp_id, parent.info.run_id, name, run)


def _write(client: MlflowClient, exp_id: str, parent_id: str, grid: str, run: Run) -> None:
    sweep = "".join(f"/{k}={v}" for k, v in sorted(run.sweep.items()))
    diverged = run.correct is None
    label, bounds, higher, summed = METRICS[run.metric]
    tags = {
        schema.PARENT: parent_id,
        schema.CELL_ID: f"{run.task}-{run.attention}-{run.optimizer}{sweep}-{run.seed}"
        + ("" if run.lr == "0.001" else f"-lr{run.lr}"),
        schema.GRID: grid,
        schema.PHASE: "final",
        schema.OUTCOME: "diverged" if diverged else "ok",
        schema.METRIC: run.metric,
        schema.TARGET: "0.8" if higher else "2.0",
        schema.HIGHER_IS_BETTER: str(higher).lower(),
        schema.SWEEP: json.dumps(run.sweep),
    }
    if run.metric_tags:
        tags |= {schema.METRIC_LABEL: label, schema.METRIC_BOUNDS: bounds}
    name = f"{run.task}/{run.attention}/{run.optimizer}/lr={run.lr}{sweep}/seed={run.seed}"
    run_id = client.create_run(exp_id, run_name=name, tags=tags).info.run_id
    params = {
        "task": run.task,
        "attention": run.attention,
        "optimizer": run.optimizer,
        "lr": run.lr,
        "seed": str(run.seed),
        "steps": "20",
        "phase": "final",
        "model.n_params": str(run.n_params),
        "data.n_train": "512",
        "data.n_val": str(N_TEST),
        "data.n_test": str(N_TEST if diverged else len(run.correct)),
    }
    if run.chance is not None:
        params["data.chance"] = str(run.chance)
    metrics = []
    if not diverged:
        tokens = np.ones(len(run.correct), dtype=int)
        loss = np.where(run.correct == 1, 0.2, 2.5)
        # per example what the metric sums: correct positions, or bits (nats / ln 2)
        metric_sum = summed(run.correct, loss)
        score = float(metric_sum.sum() / tokens.sum())
        metrics += [
            Metric(f"test/{run.metric}", score, 0, 20),
            Metric(f"val/{run.metric}", score, 0, 20),
        ]
        if run.outcomes:
            what = {"metric_sum": metric_sum.tolist()}
            if run.outcomes_format == "correct":
                what = {"correct": run.correct.astype(int).tolist()}
            client.log_dict(
                run_id,
                {"n_tokens": tokens.tolist(), **what, "loss_nats": loss.tolist()},
                schema.TEST_OUTCOMES,
            )
    for key, points in (run.attn or {}).items():
        metrics += [Metric(key, value, 0, step) for step, value in points.items()]
    client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()],
                     tags=[RunTag(schema.ACCELERATOR, "cpu")])  # fmt: skip
    client.set_terminated(run_id, "FINISHED")


def correct_with(n_right: int, seed: int, n: int = N_TEST) -> np.ndarray:
    """A 0/1 vector with exactly n_right ones at random places."""
    out = np.zeros(n, dtype=int)
    out[np.random.default_rng(seed).choice(n, n_right, replace=False)] = 1
    return out


def analyse(client: MlflowClient, name: str):
    exp = collect(client, name, "http://127.0.0.1:5000")
    sc = stats.scores(exp)
    table = stats.results_table(exp, sc)
    return exp, sc, table


def report_html(client: MlflowClient, name: str, tmp_path: Path) -> str:
    out = tmp_path / f"report-{name}"
    build_report(client, name, out, formats=("html",))
    return (out / "report.html").read_text()


def findings(html: str) -> list[str]:
    """The summary's sentences, as text."""
    return [unescape(f) for f in re.findall(r'<p class="finding">(.*?)</p>', html, re.S)]


def row_of(table, attention: str, optimizer: str = "adam"):
    rows = table[(table.attention == attention) & (table.optimizer == optimizer)]
    assert len(rows) == 1
    return rows.iloc[0]


# --------------------------------------------------------------------------- what the issue pins


def test_two_seeds_of_constant_different_scores_are_not_significant_and_say_why(
    client: MlflowClient, tmp_path: Path
) -> None:
    """Issue 12's case: 75/104 vs 89/104 on both seeds used to be 'p < 0.0001'."""
    runs = [Run("dot", "adam", s, correct_with(75, 10 + s)) for s in (1, 2)]
    runs += [Run("multihead", "adam", s, correct_with(89, 20 + s)) for s in (1, 2)]
    write_experiment(client, "two", runs)
    html = report_html(client, "two", tmp_path)
    ((row,),) = tables(html, "comparisons")
    assert (row["A"], row["B"], row["n"]) == ("dot", "multihead", "2")
    assert row["mean A"] == f"{75 / 104:.4f}" and row["mean B"] == f"{89 / 104:.4f}"
    assert row["p seeds"] == "0.5000"  # the smallest two-sided p with 2 pairs: 2 / 2^2
    assert float(row["p (Holm)"]) >= 0.5
    assert row["result"] == "not significant"
    needs = "with 1 comparison, an exact paired test needs at least 6 seeds (here 2)"
    assert row["reason"] == needs
    summary_text = html.split('id="results"')[0]
    # by construction nothing can reject here: said first, as a property of the design
    first = findings(html)[0]
    assert first.startswith("With 2 seeds and 1 comparison, no test here can reject")
    assert "2^(1-2) = 0.5" in first and "property of the design" in first
    assert "No difference is significant after correction" not in summary_text
    # intervals beside Holm-adjusted p are per comparison; P(A > B)'s from 2 seeds is marked
    assert row["95% CI of P (unadjusted)"].endswith("*") and row["95% CI (unadjusted)"]
    assert "marked *" in html.split('id="comparisons"')[1]
    # the summary's best mean rank carries the few-seeds caveat
    assert "with 2 seeds per configuration (fewer than 5)" in summary_text
    (summary,) = tables(html, "summary")
    assert summary[0]["winner"] == "multihead + adam" and summary[0]["n"] == "2"
    assert summary[0]["how sure"] == (
        "not significantly different from dot + adam (Holm p = 0.5; with 1 comparison, "
        "an exact paired test needs at least 6 seeds (here 2))"
    )


def test_six_seeds_of_clearly_separated_scores_are_significant(
    client: MlflowClient, tmp_path: Path
) -> None:
    seeds = range(1, 7)
    runs = [Run("dot", "adam", s, correct_with(70 + s % 3, 30 + s)) for s in seeds]
    runs += [Run("multihead", "adam", s, correct_with(92 - s % 2, 40 + s)) for s in seeds]
    write_experiment(client, "six", runs)
    html = report_html(client, "six", tmp_path)
    ((row,),) = tables(html, "comparisons")
    assert row["n"] == "6" and row["p seeds"] == "0.0312"  # 2 / 2^6, exact
    assert float(row["p two-way bootstrap (check, not a test)"]) < 0.01
    # 6 seeds, but every dot run is below every multihead run in every bootstrap replicate:
    # P(A > B)'s interval is 0 - 0, which describes these runs, not a certainty; marked
    assert row["95% CI of P (unadjusted)"] == "0.00 – 0.00*"
    assert "zero width (every bootstrap replicate gave the same value" in html
    (ranked,) = tables(html, "ranking")
    assert [r["95% interval"] for r in ranked] == ["1.00 – 1.00*", "2.00 – 2.00*"]
    assert "95% interval 1.00 – 1.00 (of zero width: every bootstrap replicate" in html
    assert row["p"] == row["p seeds"] and row["p (Holm)"] == row["p seeds"]  # m = 1
    assert row["result"] == "multihead better" and row["reason"] == ""
    assert float(row["P(A>B)"]) == 0.0  # every dot run is worse than every multihead run
    low, high = (float(x) for x in row["95% CI (unadjusted)"].split(" – "))
    assert low < float(row["A − B"]) < high < 0
    assert "On text_cls, multihead + adam beats dot + adam: accuracy" in html
    assert "No difference is significant" not in html
    assert "no test here can reject" not in html  # 6 seeds, 1 comparison: a test can
    assert "fewer than 5) the seed bootstrap" not in html


def test_intervals_include_the_test_set_when_seeds_agree(client: MlflowClient) -> None:
    """Constant scores over seeds used to give a zero-width interval; with a 104-example test
    set the interval is about the binomial one, +-1.96 sqrt(p (1 - p) / 104) = +-8.6 points."""
    same = correct_with(75, 7)
    runs = [Run("dot", "adam", s, same.copy()) for s in (1, 2, 3)]
    runs += [Run("multihead", "adam", s, correct_with(89, 8)) for s in (1, 2, 3)]
    runs += [Run("additive", "adam", s, correct_with(80, 9), outcomes=False) for s in (1, 2, 3)]
    runs += [Run("scaled_dot", "adam", 1, correct_with(80, 10))]
    write_experiment(client, "wide", runs)
    _, _, table = analyse(client, "wide")
    dot = row_of(table, "dot")
    p = 75 / 104
    half = 1.96 * math.sqrt(p * (1 - p) / 104)
    assert dot["mean"] == pytest.approx(p) and dot["std"] == 0.0
    assert (dot.ci_high - dot.ci_low) / 2 == pytest.approx(half, rel=0.15)
    assert dot.ci_low < p < dot.ci_high and dot.interval == "seeds and test set"
    # no per-example outcomes and seeds that agree: nothing varies, so no interval (a
    # zero-width one would claim a certainty that 3 seeds cannot give), and it says why
    additive = row_of(table, "additive")
    assert math.isnan(additive.ci_low) and math.isnan(additive.ci_high)
    assert additive.interval == (
        "seeds only (test-set uncertainty not included); no interval: the 3 seeds scored "
        "alike and nothing else varies"
    )
    # one seed: the test set alone
    single = row_of(table, "scaled_dot")
    assert single.interval == "test set only (1 seed)" and single.ci_high - single.ci_low > 0.1


def test_intervals_are_reproducible_and_wider_than_seed_noise_alone(client: MlflowClient) -> None:
    runs = [Run("dot", "adam", s, correct_with(60 + 5 * s, s)) for s in (1, 2, 3, 4)]
    write_experiment(client, "again", runs)
    first = analyse(client, "again")[2]
    second = analyse(client, "again")[2]
    assert (first.ci_low[0], first.ci_high[0]) == (second.ci_low[0], second.ci_high[0])
    scores = np.array([60 + 5 * s for s in (1, 2, 3, 4)]) / 104
    seed_only = np.percentile(
        np.random.default_rng(0).choice(scores, (4000, 4)).mean(axis=1), [2.5, 97.5]
    )
    assert first.ci_high[0] - first.ci_low[0] > seed_only[1] - seed_only[0]


def test_exact_permutation_p_values_by_hand() -> None:
    # n = 2: 4 sign assignments, two-sided p = 2 * 1/4
    assert stats.sign_flip_p([0.86, 0.86], [0.72, 0.72]) == 0.5
    # n = 6, all differences positive: 2 / 2^6
    assert stats.sign_flip_p(np.ones(6), np.zeros(6)) == pytest.approx(0.03125)
    # mixed signs: differences 3/8, 1/8, -1/8, 1/4 (sum 5/8); of the 16 sign assignments the
    # sums >= 5/8 are 7/8, 5/8 (flip -1/8 -> +1/8 and 1/8 -> -1/8): 3 of 16, two-sided 6/16
    d = np.array([0.375, 0.125, -0.125, 0.25])
    assert stats.sign_flip_p(d + 0.5, np.full(4, 0.5)) == pytest.approx(6 / 16)
    # brute force over all assignments for a random case
    rng = np.random.default_rng(3)
    d = rng.normal(0.1, 0.2, 7)
    sums = [abs(np.dot(signs, d)) for signs in itertools.product([-1, 1], repeat=7)]
    expected = np.mean(np.array(sums) >= abs(d.sum()) - 1e-12)
    assert stats.sign_flip_p(d, np.zeros(7)) == pytest.approx(expected)
    # never 0, and no test without variation or below two pairs
    assert stats.sign_flip_p([0.7, 0.7], [0.7, 0.7]) == 1.0
    assert math.isnan(stats.sign_flip_p([0.9], [0.1]))
    # the number of seeds an exact test needs before Holm's first step can pass
    assert [stats.seeds_needed(m) for m in (1, 3, 4, 48)] == [6, 7, 8, 11]
    for m in (1, 3, 4, 48):
        k = stats.seeds_needed(m)
        assert 2.0 ** (1 - k) * m < 0.05 <= 2.0 ** (2 - k) * m


def test_bootstrap_p_is_two_sided_and_never_zero() -> None:
    assert stats.bootstrap_p(np.full(2000, 0.1)) == 1 / 2000
    assert stats.bootstrap_p(np.zeros(100)) == 1.0
    r = np.r_[np.full(30, -1.0), np.full(970, 1.0)]
    assert stats.bootstrap_p(r) == pytest.approx(0.06)


def test_a_difference_within_test_set_noise_is_not_called(client: MlflowClient) -> None:
    """Intersection-union: 6 seeds where B is always better, by one example of 104: the exact
    seed test alone would call it (p = 0.031); resampling the test set does not confirm it."""
    runs = []
    for s in range(1, 7):
        a = correct_with(80, 50 + s)
        b = a.copy()
        b[np.flatnonzero(a == 0)[0]] = 1  # one more right answer, same examples otherwise
        runs += [Run("dot", "adam", s, a), Run("scaled_dot", "adam", s, b)]
    write_experiment(client, "iut", runs)
    exp, sc, _ = analyse(client, "iut")
    (c,) = stats.comparisons(exp, sc).itertuples()
    assert c.p_seed == pytest.approx(0.03125) and c.p_boot > 0.05
    assert c.p == c.p_boot and not c.significant
    assert c.reason == "not confirmed by the two-way bootstrap (seeds and test set)"


def test_a_diverged_seed_counts_at_chance_everywhere(client: MlflowClient, tmp_path: Path) -> None:
    """1 of 3 seeds alive at 0.95 (two diverged, chance 0.25) loses to 3 seeds at 0.90."""
    runs = [Run("dot", "adam", 1, correct_with(99, 1))]  # 0.952
    runs += [Run("dot", "adam", s, None) for s in (2, 3)]
    runs += [Run("multihead", "adam", s, correct_with(94, s)) for s in (1, 2, 3)]  # 0.904
    write_experiment(client, "div", runs)
    exp, sc, table = analyse(client, "div")
    dot = row_of(table, "dot")
    assert (dot.n, dot.diverged) == (3, 2)
    assert dot["mean"] == pytest.approx((99 / 104 + 0.25 + 0.25) / 3)
    assert dot.ci_low < dot["mean"] < dot.ci_high
    won = stats.winners(exp, table, sc)
    assert won.winners[0] == ["multihead + adam"]
    (c,) = stats.comparisons(exp, sc).itertuples()
    assert c.n == 3 and (c.diverged_a, c.diverged_b) == (2, 0)
    assert c.diff == pytest.approx(dot["mean"] - 94 / 104)
    assert c.p_seed == pytest.approx(stats.sign_flip_p([99 / 104, 0.25, 0.25], [94 / 104] * 3))
    assert c.p_improve == pytest.approx(3 / 9)  # the alive seed beats all three
    ranked = stats.ranking(table, sc)
    assert ranked.config.tolist() == ["multihead + adam", "dot + adam"]
    html = report_html(client, "div", tmp_path)
    (results,) = tables(html, "results")
    shown = next(r for r in results if r["attention"] == "dot")
    assert (shown["n"], shown["diverged"]) == ("3", "2")
    assert "diverged (counted at chance): dot + adam 2 of 3" in html  # a figure caption
    summary = html[html.index('id="summary"') : html.index('id="results"')]
    assert "Partial results" not in summary  # a diverged run has a result; the grid is whole
    assert "2 final run(s), counted at the task's chance level" in summary


def test_without_a_recorded_chance_level_a_diverged_run_counts_as_zero_accuracy(
    client: MlflowClient,
) -> None:
    runs = [Run("dot", "adam", 1, correct_with(90, 1), chance=None),
            Run("dot", "adam", 2, None, chance=None)]  # fmt: skip
    write_experiment(client, "nochance", runs)
    _, sc, table = analyse(client, "nochance")
    assert table["mean"][0] == pytest.approx(90 / 104 / 2)
    assert any("data.chance is not recorded" in note for note in sc.notes)


def test_ties_are_named_as_ties(client: MlflowClient, tmp_path: Path) -> None:
    runs = []
    for s in (1, 2, 3):
        best = correct_with(100, s)
        runs += [Run("dot", "adam", s, best), Run("multihead", "adam", s, best.copy()),
                 Run("additive", "adam", s, correct_with(60, 10 + s))]  # fmt: skip
    write_experiment(client, "tie", runs)
    exp, sc, table = analyse(client, "tie")
    won = stats.winners(exp, table, sc)
    assert won.winners[0] == ["dot + adam", "multihead + adam"]
    tests = stats.comparisons(exp, sc)
    pair = tests[(tests.a == "dot") & (tests.b == "multihead")].iloc[0]
    assert pair.better == "tie" and not pair.significant and pair.reason == "constant and equal"
    ranked = stats.ranking(table, sc)
    top = ranked.set_index("config")
    assert top.mean_rank["dot + adam"] == top.mean_rank["multihead + adam"] == 1.5
    assert top.tied_with["dot + adam"] == ["multihead + adam"]
    html = report_html(client, "tie", tmp_path)
    tie = "On text_cls, 2 configurations tie for the best accuracy, dot + adam"
    assert f"{tie} {100 / 104:.4g} (95% interval" in html
    assert f"multihead + adam {100 / 104:.4g} (95% interval" in html
    (summary,) = tables(html, "summary")
    assert [r["winner"] for r in summary] == ["dot + adam (tie)", "multihead + adam (tie)"]
    assert summary[0]["95% interval"] == summary[1]["95% interval"]  # each its own interval
    assert "tied with multihead + adam" in summary[0]["how sure"]


def test_fewer_than_two_paired_seeds_is_never_significant(client: MlflowClient) -> None:
    runs = [Run("dot", "adam", 1, correct_with(10, 1)), Run("multihead", "adam", 1,
            correct_with(104, 2)), Run("dot", "adam", 2, correct_with(12, 3)),
            Run("multihead", "adam", 3, correct_with(103, 4))]  # fmt: skip
    write_experiment(client, "one", runs)
    exp, sc, _ = analyse(client, "one")
    (c,) = stats.comparisons(exp, sc).itertuples()
    assert c.n == 1 and math.isnan(c.p) and math.isnan(c.p_holm)
    assert not c.significant and c.reason == "n < 2 paired seeds"


def test_probability_of_improvement_is_the_brute_force_count() -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        x = rng.integers(0, 4, rng.integers(1, 7)) / 4
        y = rng.integers(0, 4, rng.integers(1, 7)) / 4
        for higher in (True, False):
            better = [(a > b) if higher else (a < b) for a, b in itertools.product(x, y)]
            equal = [a == b for a, b in itertools.product(x, y)]
            expected = (np.sum(better) + 0.5 * np.sum(equal)) / (len(x) * len(y))
            assert stats.prob_improvement(x, y, higher) == pytest.approx(expected)
            reps = stats.prob_improvement_replicates(x[None, :], y[None, :], higher)
            if len(x) == len(y):
                assert reps[0] == pytest.approx(expected)


def test_holm_steps_down_and_keeps_nan_out_of_the_family() -> None:
    # Holm 1979: sorted p 0.01, 0.02, 0.04 with m = 3 -> 0.03, 0.04, 0.04 (monotone)
    assert stats.holm([0.04, 0.01, math.nan, 0.02]) == pytest.approx(
        [0.04, 0.03, math.nan, 0.04], nan_ok=True
    )
    assert stats.holm([0.9, 0.8]) == [1.0, 1.0]


def test_ranking_intervals_and_friedman_only_from_three_tasks_and_three_configs(
    client: MlflowClient,
) -> None:
    levels = {"dot": 70, "scaled_dot": 80, "multihead": 90}
    runs = [
        Run(kind, "adam", s, correct_with(level + 3 * t - s, 100 * t + 10 * s + i), task=task)
        for t, task in enumerate(["copy", "reverse", "text_cls"])
        for i, (kind, level) in enumerate(levels.items())
        for s in (1, 2, 3)
    ]
    write_experiment(client, "rank", runs)
    _, sc, table = analyse(client, "rank")
    ranked = stats.ranking(table, sc)
    assert ranked.config.tolist() == ["multihead + adam", "scaled_dot + adam", "dot + adam"]
    assert ranked.mean_rank.tolist() == [1.0, 2.0, 3.0]
    for r in ranked.itertuples():
        assert r.rank_low <= r.mean_rank <= r.rank_high
    assert ranked.p_best.sum() == pytest.approx(1.0) and ranked.p_best[0] > 0.9
    info = stats.friedman(table, ranked)
    assert info["done"] and (info["N"], info["k"]) == (3, 3)
    assert info["cd"] == pytest.approx(2.343 * math.sqrt(3 * 4 / (6 * 3)), rel=1e-3)  # Demsar
    assert info["chi2"] == pytest.approx(6.0)  # perfect agreement: N (k - 1)
    assert 0 < info["p_F"] <= info["p_chi2"] + 1e-12  # F infinite: falls back, never 0
    assert ranked.within_cd.tolist() == [True, True, False]  # 3 - 1 = 2 >= CD 1.91
    two_tasks = table[table.task != "copy"]
    info = stats.friedman(two_tasks, stats.ranking(two_tasks, sc))
    assert not info["done"] and "at least 3 tasks" in info["why_not"]


def test_parameter_counts_more_than_ten_percent_apart_are_named(client: MlflowClient) -> None:
    runs = [Run("dot", "adam", 1, correct_with(80, 1), n_params=10_000),
            Run("scaled_dot", "adam", 1, correct_with(80, 2), n_params=10_500),
            Run("additive", "adam", 1, correct_with(80, 3), n_params=12_000)]  # fmt: skip
    write_experiment(client, "params", runs)
    _, _, table = analyse(client, "params")
    assert row_of(table, "additive").n_params == 12_000
    (warning,) = stats.parameter_warnings(table)
    assert "dot 10,000" in warning and "additive 12,000" in warning and "1.20" in warning
    assert stats.parameter_warnings(table[table.attention != "additive"]) == []


def test_lower_is_better_metrics_pick_the_lowest(client: MlflowClient) -> None:
    """bpc: lower is better; replicates are recomputed from loss_nats."""
    runs = [Run("dot", "adam", s, correct_with(50, s), metric="bpc", task="char_lm",
                chance=4.5) for s in (1, 2)]  # fmt: skip
    runs += [Run("multihead", "adam", s, correct_with(90, 10 + s), metric="bpc",
                 task="char_lm", chance=4.5) for s in (1, 2)]  # fmt: skip
    runs += [Run("additive", "adam", 1, None, metric="bpc", task="char_lm", chance=4.5)]
    write_experiment(client, "bpc", runs)
    exp, sc, table = analyse(client, "bpc")
    assert stats.winners(exp, table, sc).winners[0] == ["multihead + adam"]
    assert row_of(table, "additive")["mean"] == 4.5
    multihead = row_of(table, "multihead")
    assert multihead.ci_low < multihead["mean"] < multihead.ci_high
    assert multihead.interval == "seeds and test set"


def test_the_report_shows_sizes_chance_params_and_the_diagnostics_figure(
    client: MlflowClient, tmp_path: Path
) -> None:
    runs = []
    for d_k, kind, s in itertools.product((16, 64, 256), ("dot", "scaled_dot"), (1,)):
        std = math.sqrt(d_k) if kind == "dot" else 1.0
        attn = {"attn/logit_std/layer0": {0: std, 20: std * 1.1},
                "attn/entropy/layer0": {0: 2.0 / std, 20: 1.5 / std}}  # fmt: skip
        runs.append(Run(kind, "adam", s, correct_with(80, d_k + s), sweep={"model.d_k": d_k},
                        attn=attn))  # fmt: skip
    write_experiment(client, "facts", runs)
    out = tmp_path / "facts"
    build_report(client, "facts", out, formats=("html",))
    html = (out / "report.html").read_text()
    assert "examples: train 512, validation 104, test 104; chance level: 0.2500 (acc)" in html
    (results,) = tables(html, "results")
    assert {r["params"] for r in results} == {"10,000"}
    assert (out / "figures" / "diagnostics-text_cls.png").stat().st_size > 5000
    assert 'id="fig-diagnostics-text_cls"' in html
    assert "How to read the statistics" in html and "Owen 2007" in html
    assert "No Friedman test or critical difference" in html


def test_a_task_with_many_comparisons_gets_enough_bootstrap_replicates() -> None:
    """p_boot is at least 1/B: with m comparisons B must exceed m / alpha, or Holm's first step
    could never pass whatever the data; B grows to 2 m / alpha where N_BOOT is too few."""
    kinds = ["dot", "scaled_dot", "additive", "multihead"]
    optimizers = ["adam", "adamw", "sgd", "rmsprop"]
    points = [f"model.d_k={d}" for d in (8, 16, 32, 64, 128, 256)]
    frame = pd.DataFrame(
        [("copy", p, a, o) for p in points for a in kinds for o in optimizers],
        columns=stats.KEY,
    )
    m = stats.family_size(frame)
    assert m == 6 * (4 * 6 + 4 * 6)  # per point: 6 attention pairs x 4 + 6 optimizer pairs x 4
    b = stats.replicates_for(m)
    assert m / b < stats.ALPHA / 1.9 and b > stats.N_BOOT
    assert stats.replicates_for(stats.family_size(frame[frame.sweep == points[0]])) == 2000


# --------------------------------------------------------------------------- review fixes


def test_the_winner_is_judged_only_by_the_pre_specified_comparisons(
    client: MlflowClient, tmp_path: Path
) -> None:
    """2 attention kinds x 2 optimizers, 7 seeds, one configuration ahead everywhere. Section 4
    has m = 4 comparisons, so 7 seeds cannot pass Holm's first step (2^-6 * 4 > 0.05); a
    separate winner-vs-each family (m = 3) would have called the winner significantly better."""
    runs = []
    for s in range(1, 8):
        runs += [Run("multihead", "adam", s, correct_with(95 - s % 2, 10 * s)),
                 Run("multihead", "sgd", s, correct_with(70 + s % 3, 10 * s + 1)),
                 Run("dot", "adam", s, correct_with(72 + s % 2, 10 * s + 2)),
                 Run("dot", "sgd", s, correct_with(60 + s % 3, 10 * s + 3))]  # fmt: skip
    write_experiment(client, "post", runs)
    html = report_html(client, "post", tmp_path)
    section4 = [row for table in tables(html, "comparisons") for row in table]
    assert len(section4) == 4 and not any(r["result"].endswith("better") for r in section4)
    summary_text = html[html.index('id="summary"') : html.index('id="results"')]
    assert "significantly better" not in summary_text
    ((row,),) = tables(html, "summary")
    assert row["winner"] == "multihead + adam" and row["n"] == "7"
    how = row["how sure"]
    assert how.startswith("not significantly different from ")
    assert "dot + adam" in how and "multihead + sgd" in how and "Holm p = " in how
    assert "needs at least 8 seeds (here 7)" in how
    assert how.endswith(
        "not compared directly with dot + sgd (they differ in two factors, or in the sweep point)"
    )


def test_values_equal_to_rounding_error_tie_everywhere() -> None:
    assert stats.prob_improvement([0.1 + 0.2] * 3, [0.3] * 3, True) == 0.5
    reps = stats.prob_improvement_replicates(np.full((2, 3), 0.1 + 0.2), np.full((2, 3), 0.3), True)
    assert reps.tolist() == [0.5, 0.5]
    assert stats._ranks(np.array([[0.1 + 0.2, 0.3, 0.1]]), True).tolist() == [[1.5, 1.5, 3.0]]
    n, b = 3, 10

    def config(attention: str, value: float) -> stats.Config:
        return stats.Config(("t", "", attention, "adam"), True, [1, 2, 3], ["a", "b", "c"],
                            np.full(n, value), np.zeros(n, bool), np.ones(n, bool),
                            np.full((b, n), value),
                            np.random.default_rng(0).random((b, n)))  # fmt: skip

    c = stats.compare(config("dot", 0.1 + 0.2), config("multihead", 0.3))
    assert c["constant_equal"] and c["p_seed"] == 1.0 and c["p_improve"] == 0.5
    table = pd.DataFrame(
        {"task": "t", "sweep": "", "attention": ["dot", "multihead", "additive"],
         "optimizer": "adam", "mean": [0.685897435897436, 0.6858974358974358, 0.5],
         "higher_is_better": True}
    )  # fmt: skip
    ranked = stats.ranking(table).set_index("config")
    assert ranked.mean_rank["dot + adam"] == ranked.mean_rank["multihead + adam"] == 1.5
    assert ranked.tied_with["dot + adam"] == ["multihead + adam"]


def test_two_seeds_without_test_noise_get_the_t_interval_with_one_degree_of_freedom(
    client: MlflowClient,
) -> None:
    low, high = stats.two_stage_interval([0.70, 0.80], np.full(50, 0.75))
    assert (low, high) == pytest.approx((0.75 - 12.706 * 0.05, 0.75 + 12.706 * 0.05), abs=1e-3)
    runs = [Run("dot", "adam", s, correct_with(k, s, n=10), outcomes=False)
            for s, k in ((1, 7), (2, 8))]  # fmt: skip
    write_experiment(client, "t1", runs)
    table = analyse(client, "t1")[2]
    dot = row_of(table, "dot")
    assert dot.ci_low == pytest.approx(0.75 - 12.706 * 0.05, abs=1e-3)
    assert dot.ci_high == 1.0  # clipped to accuracy's range
    assert dot.interval == "seeds only (test-set uncertainty not included)"


def test_exact_sign_flip_p_on_quantized_differences_matches_rational_enumeration() -> None:
    from fractions import Fraction

    assert stats.sign_flip_p(np.array([-1, -2, 2]) / 104, np.zeros(3)) == 1.0
    rng = np.random.default_rng(11)
    for _ in range(30):
        n = int(rng.integers(2, 9))
        k = rng.integers(-3, 4, n)
        a = rng.integers(60, 90, n)
        x, y = a / 104, (a - k) / 104  # differences k/104 as the float subtraction makes them
        exact = [Fraction(int(v), 104) for v in k]
        observed = abs(sum(exact))
        count = sum(
            abs(sum(s * v for s, v in zip(signs, exact, strict=True))) >= observed
            for signs in itertools.product([-1, 1], repeat=n)
        )
        expected = 1.0 if not any(k) else count / 2**n
        assert stats.sign_flip_p(x, y) == pytest.approx(expected, abs=1e-12)
    # beyond EXACT_MAX_SEEDS: random sign vectors, never 0, reproducible
    d = np.ones(20)
    p = stats.sign_flip_p(d, np.zeros(20))
    assert p == pytest.approx(1 / (1 + stats.RANDOM_RESAMPLES)) and p == stats.sign_flip_p(d, 0 * d)


def test_seeds_needed_counts_only_nonzero_differences(client: MlflowClient) -> None:
    """7 seeds, but B equals A on 2 of them: 5 nonzero differences, smallest p 2^-4 > 0.05."""
    runs = []
    for s in range(1, 8):
        a = correct_with(70, 60 + s)
        b = a.copy() if s <= 2 else correct_with(95, s)
        runs += [Run("dot", "adam", s, a), Run("multihead", "adam", s, b)]
    write_experiment(client, "zeros", runs)
    exp, sc, _ = analyse(client, "zeros")
    (c,) = stats.comparisons(exp, sc).itertuples()
    assert c.n == 7 and c.n_nonzero == 5 and c.p_seed == pytest.approx(2.0**-4)
    assert not c.significant
    assert c.reason == (
        "with 1 comparison, an exact paired test needs at least 6 seeds with a nonzero paired "
        "difference (here 5 of 7)"
    )


def test_a_finished_run_with_a_nan_test_score_counts_at_chance(client: MlflowClient) -> None:
    runs = [Run("dot", "adam", s, correct_with(90, s)) for s in (1, 2)]
    write_experiment(client, "nan", runs)
    exp = collect(client, "nan", "http://127.0.0.1:5000")
    exp.runs.loc[exp.runs.run_name.str.endswith("seed=2"), "test"] = math.nan  # no score
    sc = stats.scores(exp)
    table = stats.results_table(exp, sc)
    dot = row_of(table, "dot")
    assert (dot.runs, dot.n, dot.diverged) == (2, 2, 1)
    assert dot["mean"] == pytest.approx((90 / 104 + 0.25) / 2)
    assert any("no finite test score" in note for note in sc.notes)


def test_critical_difference_groups_only_when_friedman_rejects() -> None:
    rows = []
    for t, task in enumerate(["a", "b", "c"]):
        for i, kind in enumerate(["dot", "scaled_dot", "multihead"]):
            rows.append((task, "", kind, "adam", (i + t) % 3 / 10, True))  # a Latin square
    table = pd.DataFrame(rows, columns=[*stats.KEY, "mean", "higher_is_better"])
    ranked = stats.ranking(table)
    info = stats.friedman(table, ranked)
    assert info["done"] and not info["significant"] and info["top_group"] == []
    assert ranked.within_cd.isna().all()
    assert set(info["mean_ranks"].values()) == {2.0}
    assert info["ranks_text"].count("2.00") == 3


# --------------------------------------------------------------------------- metric, order, figures


def test_a_new_metric_is_reported_from_what_the_runs_declare(
    client: MlflowClient, tmp_path: Path
) -> None:
    """A metric the report has never seen (an error rate: lower is better, in [0, 1]): its
    label, range and direction come from the runs' tags, its replicates from metric_sum."""
    runs = [Run("dot", "adam", s, correct_with(94 + s, s), metric="err", chance=None)
            for s in (1, 2, 3)]  # fmt: skip
    runs += [Run("multihead", "adam", s, correct_with(104, 10 + s), metric="err", chance=None)
             for s in (1, 2)]  # fmt: skip
    runs += [Run("multihead", "adam", 3, None, metric="err", chance=None)]
    write_experiment(client, "err", runs)
    exp, sc, table = analyse(client, "err")
    dot = row_of(table, "dot")
    assert dot["mean"] == pytest.approx(1 - np.mean([95, 96, 97]) / 104)
    assert dot.interval == "seeds and test set" and dot.ci_low < dot["mean"] < dot.ci_high
    multihead = row_of(table, "multihead")  # two perfect seeds, one diverged without chance
    assert multihead["mean"] == pytest.approx(1 / 3)  # diverged: the range's worst end, 1
    assert any("counts as 1, the worst value of the metric's range" in n for n in sc.notes)
    assert stats.winners(exp, table, sc).winners[0] == ["dot + adam"]
    html = report_html(client, "err", tmp_path)
    assert "On text_cls, the best error rate is dot + adam" in html
    assert "test error rate, lower is better" in html


def test_older_runs_keep_their_metric_range_and_test_set_intervals(
    client: MlflowClient,
) -> None:
    """Runs recorded before the metric tags and metric_sum: an accuracy or bpc run is read as
    it was meant (schema.LEGACY_METRICS): same range, same outcomes, same numbers as a run
    of the current schema with the same data."""
    for metric in ("acc", "bpc"):
        old = [Run("dot", "adam", s, correct_with(k, s, n=10), metric=metric, metric_tags=False,
                   outcomes_format="correct") for s, k in ((1, 7), (2, 8))]  # fmt: skip
        new = [dataclasses.replace(r, metric_tags=True, outcomes_format="metric_sum") for r in old]
        write_experiment(client, f"old-{metric}", old)
        write_experiment(client, f"new-{metric}", new)
        exp_old, _, table_old = analyse(client, f"old-{metric}")
        exp_new, _, table_new = analyse(client, f"new-{metric}")
        assert len(exp_old.outcomes) == 2
        for run_old, run_new in zip(exp_old.final.run_id, exp_new.final.run_id, strict=True):
            assert np.allclose(exp_old.outcomes[run_old]["metric_sum"],
                               exp_new.outcomes[run_new]["metric_sum"])  # fmt: skip
        a, b = row_of(table_old, "dot"), row_of(table_new, "dot")
        assert (a.metric_label, a.metric_low, a.metric_high) == (
            b.metric_label, b.metric_low, b.metric_high)  # fmt: skip
        same = ["mean", "ci_low", "ci_high", "interval"]
        assert list(a[same]) == list(b[same])


def test_runs_of_an_unknown_metric_without_tags_get_neutral_defaults(
    client: MlflowClient,
) -> None:
    """No label or bounds tags and a metric the legacy table does not know: label = the
    metric's name, range unbounded (no clipping); outcomes without metric_sum are no outcomes."""
    runs = [Run("dot", "adam", s, correct_with(k, s, n=10), metric="err", metric_tags=False,
                outcomes_format="correct") for s, k in ((1, 7), (2, 8))]  # fmt: skip
    write_experiment(client, "old", runs)
    exp, _, table = analyse(client, "old")
    assert exp.outcomes == {}
    dot = row_of(table, "dot")
    assert (dot.metric_label, dot.metric_low, dot.metric_high) == ("err", -math.inf, math.inf)
    assert dot.interval == "seeds only (test-set uncertainty not included)"


def test_rows_and_legends_follow_the_grids_order(client: MlflowClient) -> None:
    """The plan lists multihead before dot and sgd before adam: the report keeps that order;
    without a plan, names sort."""
    runs = [Run(kind, opt, s, correct_with(70 + s, s)) for kind in ("dot", "multihead")
            for opt in ("adam", "sgd") for s in (1, 2)]  # fmt: skip
    plan = [
        {"task": "text_cls", "attention": kind, "optimizer": opt, "sweep": {}, "phase": "final",
         "seed": s, "lr": 0.001, "cell_id": f"text_cls-{kind}-{opt}-{s}"}
        for kind in ("multihead", "dot") for opt in ("sgd", "adam") for s in (1, 2)
    ]  # fmt: skip
    write_experiment(client, "planned", runs, plan=plan)
    exp, _, table = analyse(client, "planned")
    assert exp.missing.empty
    assert list(zip(table.attention, table.optimizer, strict=True)) == [
        ("multihead", "sgd"), ("multihead", "adam"), ("dot", "sgd"), ("dot", "adam")]  # fmt: skip
    write_experiment(client, "unplanned", runs)
    _, _, table = analyse(client, "unplanned")
    assert list(table.attention) == ["dot", "dot", "multihead", "multihead"]
    assert list(table.optimizer) == ["adam", "sgd", "adam", "sgd"]


def test_every_figure_entry_is_drawn_or_noted_and_a_new_one_is_one_entry(
    client: MlflowClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The figure list drives section 3: a new entry appears with no other change, an entry
    that cannot draw leaves its note, and runs without attention maps leave a gallery note."""
    runs = [Run(kind, "adam", s, correct_with(70 + 10 * i + s, 10 * i + s))
            for i, kind in enumerate(("dot", "multihead")) for s in (1, 2)]  # fmt: skip
    write_experiment(client, "figs", runs)

    def line(inputs: figures.Inputs, job: figures.Job) -> Figure:
        fig = Figure()
        fig.subplots().plot([0, 1], [0, 1])
        return fig

    extra = figures.Entry("extra-{task}", "task", "{task}: an extra figure",
                          "Drawn by a test. {n}", line, "")  # fmt: skip
    never = figures.Entry("never-{task}", "task", "never", "", lambda i, j: None,
                          "No never-drawn figure for {task}.")  # fmt: skip
    monkeypatch.setattr(figures, "FIGURES", [*figures.FIGURES, extra, never])
    exp = collect(client, "figs", "http://127.0.0.1:5000")
    inputs = figures.Inputs(exp, stats.analyse(exp), Style.of(exp.order, exp.runs.attention),
                            client, tmp_path)  # fmt: skip
    drawn = figures.draw_figures(inputs, tmp_path / "figures")
    notes = [n for group in drawn.notes.values() for n in group]
    assert len(drawn.files) + len(notes) == len(figures.jobs(inputs))
    html = report_html(client, "figs", tmp_path)
    assert 'id="fig-extra-text_cls"' in html and "text_cls: an extra figure." in html
    assert "No never-drawn figure for text_cls." in html and "fig-never" not in html
    assert "No attention maps for text_cls · dot: its representative run" in html
    assert "No learning-rate sensitivity curve" in html  # no tuning runs in this grid


# --------------------------------------------------------------------------- successive halving


def test_halving_rungs_are_read_as_each_rates_longest_run_and_missing_ones_by_slot() -> None:
    """Tune runs at two budgets, as successive halving leaves them: each rate is shown by its
    longest run, hollow (`pruned`) where its group went further; a plan's cells of a later
    rung (rate unknown when planned) are matched one run each by group, seed and steps."""
    import pandas as pd

    from harness.report.collect import missing_cells
    from harness.report.plots import furthest_rung

    def row(lr: float, steps: int, status: str = "FINISHED", seed: int = 0) -> dict:
        return {"task": "copy", "attention": "dot", "optimizer": "adam", "sweep": "{}",
                "sweep_values": {}, "phase": "tune", "lr": lr, "seed": seed, "steps": steps,
                "val": lr * steps, "cell_id": f"{lr}-{steps}-{seed}", "current": True,
                "status": status}  # fmt: skip

    rung0 = [row(lr, 10) for lr in (1e-3, 1e-2, 1e-1)]
    rung1 = [row(1e-2, 30), row(1e-1, 30, "KILLED")]
    shown = furthest_rung(pd.DataFrame(rung0 + rung1[:1]))
    assert sorted(zip(shown.lr, shown.steps, shown.pruned, strict=True)) == [
        (1e-3, 10, True), (1e-2, 30, False), (1e-1, 10, True),
    ]  # fmt: skip
    assert not furthest_rung(pd.DataFrame(rung0)).pruned.any()  # one budget: nothing pruned

    def planned(lr: float | None, steps: int, seed: int = 0) -> dict:
        known = lr is not None
        return {"task": "copy", "attention": "dot", "optimizer": "adam", "sweep": {},
                "phase": "tune", "seed": seed, "steps": steps, "lr": lr,
                "cell_id": f"{lr}-{steps}-{seed}" if known else None}  # fmt: skip

    plan = [planned(lr, 10) for lr in (1e-3, 1e-2, 1e-1)] + [planned(None, 30)] * 2
    missing = missing_cells(plan, pd.DataFrame(rung0 + rung1))
    assert missing[["phase", "seed", "state"]].values.tolist() == [["tune", 0, "killed"]]
    missing = missing_cells(plan, pd.DataFrame(rung0))
    assert missing.state.tolist() == ["never started"] * 2


def test_a_difference_interval_stays_within_what_the_metric_allows(
    client: MlflowClient, tmp_path: Path
) -> None:
    """Three seeds whose paired differences disagree widely: mean +- t(2) * se reaches past
    +1 accuracy, which no difference of two accuracies can; the interval stops at 1."""
    runs = []
    for seed, (a, b) in enumerate([(103, 10), (103, 93), (103, 99)], start=1):
        runs += [Run("dot", "adam", seed, correct_with(a, seed)),
                 Run("multihead", "adam", seed, correct_with(b, 10 + seed))]  # fmt: skip
    write_experiment(client, "wide", runs)
    exp, sc, _ = analyse(client, "wide")
    diffs = np.array([a - b for a, b in [(103, 10), (103, 93), (103, 99)]]) / N_TEST
    half = st.t.ppf(0.975, 2) * diffs.std(ddof=1) / np.sqrt(3)
    assert diffs.mean() + half > 1  # the unclipped interval would be impossible
    (c,) = stats.comparisons(exp, sc).itertuples()
    assert c.diff_high == 1.0
    assert c.diff_low == pytest.approx(diffs.mean() - half, abs=0.05)  # test-set part adds a bit
    ((row,),) = tables(report_html(client, "wide", tmp_path), "comparisons")
    assert row["95% CI (unadjusted)"].endswith("– 1.0000")


def test_a_winners_verdict_says_a_shared_reason_once() -> None:
    from harness.report.stats.winners import _grouped

    text = _grouped([("a", "Holm p = 1; why"), ("b", "Holm p = 0.5"), ("c", "Holm p = 1; why")])
    assert text == "a and c (each Holm p = 1; why), or from b (Holm p = 0.5)"


def test_a_diverged_run_never_scores_above_a_finished_run(
    client: MlflowClient, tmp_path: Path
) -> None:
    """bpc's chance level is the unigram bpc, and a run that finished undertrained can be worse
    than that. A diverged run counts as the worse of the chance level and the worst finished
    score of its task, so a configuration that diverged on every seed is never ranked, or
    called significantly better, above one that finished."""
    bpc = {"metric": "bpc", "task": "char_lm", "chance": 3.0}
    seeds = range(1, 8)  # 7 seeds: 3 comparisons can pass Holm's first step
    runs = [Run("dot", "adam", s, correct_with(90 + s % 3, s), **bpc) for s in seeds]
    runs += [Run("multihead", "adam", s, correct_with(s % 3, 10 + s), **bpc) for s in seeds]
    runs += [Run("additive", "adam", s, None, **bpc) for s in seeds]
    write_experiment(client, "undertrained", runs)
    exp, sc, table = analyse(client, "undertrained")
    multihead, additive = row_of(table, "multihead"), row_of(table, "additive")
    worst = exp.final[exp.final.attention == "multihead"].test.max()
    assert multihead["mean"] > 3.0  # finished, worse than the chance level
    assert additive["mean"] == pytest.approx(worst)  # diverged: the worst finished score
    assert any("worse than the chance level" in note for note in sc.notes)
    ranked = stats.ranking(table, sc)
    assert ranked.config.tolist()[-1] == "additive + adam"
    tests = stats.comparisons(exp, sc)
    pair = tests[(tests.a == "additive") & (tests.b == "multihead")].iloc[0]
    assert pair.better == "multihead" and not pair.significant
    assert stats.winners(exp, table, sc).winners[0] == ["dot + adam"]


def test_a_task_on_which_every_run_diverged_has_no_winner(
    client: MlflowClient, tmp_path: Path
) -> None:
    """Every run scored at chance is not a tie for the best: the report says nothing trained."""
    runs = [Run(kind, "adam", s, None, task="copy") for kind in ("dot", "multihead")
            for s in (1, 2, 3)]  # fmt: skip
    runs += [Run(kind, "adam", s, correct_with(80 + s, 10 * i + s))
             for i, kind in enumerate(("dot", "multihead")) for s in (1, 2, 3)]  # fmt: skip
    write_experiment(client, "gone", runs)
    exp, sc, table = analyse(client, "gone")
    won = stats.winners(exp, table, sc).set_index("task")
    assert won.winners["copy"] == [] and pd.isna(won.winner["copy"])
    assert won.verdict["copy"] == "every run of every configuration diverged (6 runs)"
    assert won.winners["text_cls"] != []
    html = report_html(client, "gone", tmp_path)
    said = [f for f in findings(html) if f.startswith("On copy")]
    assert said == [
        "On copy, every run of every configuration diverged (6 runs, each counted at the chance "
        "level): there is no best configuration."
    ]
    (summary,) = tables(html, "summary")
    copy = next(r for r in summary if r["task"] == "copy")
    assert (copy["winner"], copy["n"], copy["diverged"]) == ("none", "6", "6")
    assert stats.best_indices(table[table.task == "copy"]) == []  # no row marked best


def test_no_zero_width_interval_is_shown_as_certainty(client: MlflowClient, tmp_path: Path) -> None:
    """Every seed right on every test example, two configurations equal on every seed and
    example, a configuration that diverged on every seed: the t interval and the bootstrap
    have nothing to vary, and their zero-width interval would read as certainty. Such an
    interval is none, with the reason; the difference's interval says what it includes."""
    runs = []
    for s in (1, 2, 3):
        same = correct_with(80 + s, s)
        runs += [Run("dot", "adam", s, np.ones(N_TEST, dtype=int)),  # 104/104 on every seed
                 Run("multihead", "adam", s, same), Run("additive", "adam", s, same.copy()),
                 Run("scaled_dot", "adam", s, None)]  # fmt: skip
    write_experiment(client, "flat", runs)
    exp, sc, table = analyse(client, "flat")
    perfect, gone = row_of(table, "dot"), row_of(table, "scaled_dot")
    assert perfect["mean"] == 1.0 and math.isnan(perfect.ci_low) and math.isnan(perfect.ci_high)
    assert perfect.interval == (
        "seeds and test set; no interval: the 3 seeds scored alike and nothing else varies"
    )
    assert (
        math.isnan(gone.ci_low)
        and gone.interval == "no interval: every seed diverged (scored at chance)"
    )
    tests = stats.comparisons(exp, sc).set_index(["a", "b"])
    equal = tests.loc[("additive", "multihead")]
    assert math.isnan(equal.diff_low) and math.isnan(equal.diff_high)
    assert equal.diff_interval == "no interval: equal on every paired seed and test example"
    varied = tests.loc[("dot", "multihead")]
    assert varied.diff_low < varied["diff"] < varied.diff_high
    assert varied.diff_interval == "seeds and test set"
    html = report_html(client, "flat", tmp_path)
    (summary,) = tables(html, "summary")
    assert summary[0]["winner"] == "dot + adam" and summary[0]["95% interval"] == "none"
    first = next(f for f in findings(html) if f.startswith("On text_cls"))
    assert "dot + adam 1 (no interval: the 3 seeds scored alike and nothing else varies" in first
    rows = [r for t in tables(html, "comparisons") for r in t]
    shown = next(r for r in rows if (r["A"], r["B"]) == ("additive", "multihead"))
    assert shown["95% CI (unadjusted)"] == "none: equal on every paired seed and test example"
    # in the figure, the two means without an interval are hollow, not bare precise points
    from harness.report.plots import point_plot

    fig = point_plot(table, "text_cls", Style.of(exp.order, exp.runs.attention))
    hollow = [line for line in fig.axes[0].lines if line.get_markerfacecolor() == "white"]
    assert sorted(float(y) for line in hollow for y in line.get_ydata()) == [0.25, 1.0]


def test_a_difference_from_one_paired_seed_says_it_is_the_test_sets_alone(
    client: MlflowClient,
) -> None:
    runs = [Run("dot", "adam", 1, correct_with(70, 1)), Run("multihead", "adam", 1,
            correct_with(90, 2)), Run("multihead", "adam", 2, correct_with(91, 3))]  # fmt: skip
    write_experiment(client, "lone", runs)
    exp, sc, _ = analyse(client, "lone")
    (c,) = stats.comparisons(exp, sc).itertuples()
    assert c.n == 1 and c.diff_low < c.diff < c.diff_high
    assert c.diff_interval == "test set only (1 paired seed)"


def test_a_seed_run_twice_at_two_rates_counts_once(client: MlflowClient) -> None:
    """Final runs of one configuration at two learning rates (a grid re-tuned and launched
    again into the same experiment): each seed is one draw of the seed's effect, so it counts
    once, by its newest run, and a note says so; counted twice, 3 seeds would pass for 6."""
    runs = [Run("dot", "adam", s, correct_with(75 + s, s)) for s in (1, 2, 3)]
    runs += [Run("multihead", "adam", s, correct_with(85 + s, 10 + s)) for s in (1, 2, 3)]
    runs += [Run("dot", "adam", s, correct_with(65 + s, 20 + s), lr="0.003") for s in (1, 2, 3)]
    write_experiment(client, "retuned", runs)
    exp, sc, table = analyse(client, "retuned")
    dot = row_of(table, "dot")
    assert (dot.runs, dot.n) == (6, 3) and dot.lr == "0.001, 0.003"
    assert dot["mean"] == pytest.approx(np.mean([66, 67, 68]) / N_TEST)  # the newer runs
    assert any("3 seeds have more than one final run" in note for note in sc.notes)
    (c,) = stats.comparisons(exp, sc).itertuples()
    assert c.n == 3 and c.mean_a == pytest.approx(dot["mean"])
