"""What the statistics claim about themselves, pinned on small frames (no MLflow, no figures):
which p gives a comparison its level, when the design lets nothing reject, the Friedman p with
few tasks, the few-seeds caveat, and what the performance profile and time-to-target rest on.
The rendered words are checked in tests/test_stats.py."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from harness import schema
from harness.report import figures, stats

# --------------------------------------------------------------------------- comparisons


def test_the_bootstrap_p_alone_is_anti_conservative_at_three_seeds_and_the_max_is_not() -> None:
    """3 seeds, no true difference: the seed bootstrap p sits at its floor 1/B whenever the
    three differences share a sign (probability 1/4), so alone it rejects about a quarter of
    the time at 5%; p = max(p_seed, p_boot) never can (the exact p is at least 0.25)."""
    rng = np.random.default_rng(11)
    datasets, b = 2000, 500
    d = rng.normal(size=(datasets, 3))
    draws = rng.integers(0, 3, size=(datasets, b, 3))
    replicates = np.take_along_axis(d[:, None, :], draws, axis=2).mean(axis=2)
    p_boot = np.array([stats.bootstrap_p(r) for r in replicates])
    p_seed = np.array([stats.sign_flip_p(x, np.zeros(3)) for x in d])
    same_sign = np.all(d > 0, axis=1) | np.all(d < 0, axis=1)
    assert np.all(p_boot[same_sign] == 1 / b)
    assert 0.18 < np.mean(p_boot < stats.ALPHA) < 0.32  # nominal 0.05
    assert np.all(p_seed >= 0.25)
    assert np.mean(np.maximum(p_seed, p_boot) < stats.ALPHA) == 0


def _tests_frame(designs: list[tuple[str, int, int]]) -> pd.DataFrame:
    """A comparisons table: per (task, paired seeds n, comparisons m), m untested-looking rows."""
    rows = [
        {"task": task, "n": n, "p": 0.5, "significant": False,
         "reason": "within seed-to-seed variation"}
        for task, n, m in designs
        for _ in range(m)
    ]  # fmt: skip
    return pd.DataFrame(rows)


def test_when_no_test_can_reject_by_construction_the_summary_says_so_first() -> None:
    won = pd.DataFrame(columns=stats.WINNER_COLUMNS)
    table = pd.DataFrame(columns=stats.RESULT_COLUMNS)
    # 3 seeds and 48 comparisons: 2^(1-3) * 48 >= 0.05 whatever the data
    tests = _tests_frame([("sort", 3, 48), ("text_cls", 3, 48)])
    assert stats.untestable_tasks(tests) == ["sort", "text_cls"]
    (sentence,) = stats.summary_sentences(table, tests, won)
    assert sentence.startswith("With 3 seeds and 48 comparisons per task, no test here can")
    assert "2^(1-3) = 0.25" in sentence and "at least 11 seeds would be needed" in sentence
    assert "property of the design" in sentence and "read the differences" in sentence
    # one task can reject (6 seeds, 1 comparison: 2^-5 < 0.05), the other cannot
    tests = _tests_frame([("sort", 3, 48), ("copy", 6, 1)])
    first, *rest = stats.summary_sentences(table, tests, won)
    assert first.startswith("With 3 seeds and 48 comparisons, no test on sort can reject")
    assert rest == [
        "No difference is significant after correction: within seed-to-seed variation "
        "(1 of 1 comparisons)."
    ]
    # 10 seeds and 48 comparisons: 48 / 512 >= 0.05 still; 11 seeds: 48 / 1024 < 0.05
    assert stats.untestable_tasks(_tests_frame([("t", 10, 48)])) == ["t"]
    assert stats.untestable_tasks(_tests_frame([("t", 11, 48)])) == []
    assert stats.design_limits(_tests_frame([("t", 11, 48)])) == ""
    # different designs are each named
    words = stats.design_limits(_tests_frame([("sort", 3, 48), ("copy", 2, 3)]))
    assert "3 seeds and 48 comparisons on sort; 2 seeds and 3 comparisons on copy" in words


def test_the_few_seeds_caveat_of_rank_intervals() -> None:
    assert stats.few_seeds_caveat(pd.DataFrame({"n": [3, 3, 0]})).startswith(
        "with 3 seeds per configuration (fewer than 5)"
    )
    assert "as few as 2 seeds" in stats.few_seeds_caveat(pd.DataFrame({"n": [2, 6]}))
    assert "too narrow and too sure" in stats.few_seeds_caveat(pd.DataFrame({"n": [4]}))
    assert stats.few_seeds_caveat(pd.DataFrame({"n": [5, 6]})) == ""


# --------------------------------------------------------------------------- Friedman


def _brute_force_friedman_p(ranks: np.ndarray) -> float:
    """Every way of permuting each task's ranks, (k!)^N outcomes, each equally likely."""
    n, k = ranks.shape
    orders = np.array(list(itertools.permutations(range(k))))
    per_task = [ranks[i][orders] for i in range(n)]  # (k!, k) each
    sums = np.zeros((1, k))
    for rows in per_task:
        sums = (sums[:, None, :] + rows[None, :, :]).reshape(-1, k)
    stat = np.sum(sums**2, axis=1)
    return float(np.mean(stat >= np.sum(ranks.sum(axis=0) ** 2) - 1e-9))


@pytest.mark.parametrize(
    "ranks",
    [
        [[1, 2, 3], [1, 3, 2]],  # N = 2, k = 3: 36 outcomes
        [[3, 2, 1], [3, 1, 2], [3, 2, 1]],
        [[1, 2.5, 2.5, 4], [2, 1, 3, 4], [1, 2, 4, 3]],  # ties keep their average ranks
    ],
)
def test_the_friedman_permutation_p_matches_brute_force_enumeration(ranks) -> None:
    r = np.array(ranks, dtype=float)
    exact = _brute_force_friedman_p(r)
    p = stats.friedman_permutation_p(r)
    draws = stats.FRIEDMAN_DRAWS
    assert abs(p - exact) <= 4 * math.sqrt(exact * (1 - exact) / draws) + 2 / draws
    assert stats.friedman_permutation_p(r) == p  # a fixed generator: reproducible


def _ranked_table(ranks: list[list[float]]) -> pd.DataFrame:
    """A results table whose task i ranks configuration j at ranks[i][j] (1 = best)."""
    rows = [
        (f"task{i}", "", f"kind{j}", "adam", -float(rank), True)
        for i, task in enumerate(ranks)
        for j, rank in enumerate(task)
    ]
    return pd.DataFrame(rows, columns=[*stats.KEY, "mean", "higher_is_better"])


def test_with_few_tasks_the_friedman_decision_is_the_permutation_p() -> None:
    """3 tasks, 3 configurations: the Iman-Davenport F rejects (p 0.049), the chi-square does
    not (0.097), the exact answer is 40/216 = 0.19: no critical-difference groups."""
    ranks = [[3, 2, 1], [3, 1, 2], [3, 2, 1]]
    table = _ranked_table(ranks)
    ranked = stats.ranking(table)
    info = stats.friedman(table, ranked)
    assert info["p_F"] < 0.05 < info["p_chi2"]
    assert info["p_method"] == "permutation" and info["p"] == info["p_perm"]
    assert info["p_perm"] == pytest.approx(
        _brute_force_friedman_p(np.array(ranks, float)), abs=0.02
    )
    assert not info["significant"] and info["top_group"] == [] and info["note"] == ""
    assert ranked.within_cd.isna().all()
    # more than 10 tasks: the Iman-Davenport F decides, as before
    many = _ranked_table([[3, 2, 1], [3, 1, 2]] * 5 + [[2, 3, 1]])
    info = stats.friedman(many, stats.ranking(many))
    assert info["N"] == 11 and info["p_method"] == "Iman-Davenport"
    assert math.isnan(info["p_perm"]) and info["p"] == info["p_F"]


def test_a_friedman_rejection_that_nemenyi_cannot_pin_to_a_pair_says_so() -> None:
    ranks = [[1, 3, 2, 4, 5, 6], [4, 2, 3, 1, 5, 6], [1, 2, 3, 5, 4, 6], [1, 2, 3, 6, 5, 4]]
    table = _ranked_table(ranks)
    ranked = stats.ranking(table)
    info = stats.friedman(table, ranked)
    assert info["significant"] and info["p_perm"] < 0.02
    assert info["cd"] > 5.5 - 1.75  # the whole range of mean ranks is within CD
    assert len(info["top_group"]) == 6 and ranked.within_cd.all()
    assert "With 4 tasks the Nemenyi test has little power" in info["note"]
    assert "cannot be pinned to any pair" in info["note"]
    # when CD does separate a configuration from the best, no such note
    agree = _ranked_table([[1, 2, 3]] * 3)  # exact p 6/216 = 0.028; 3 - 1 = 2 > CD 1.91
    info = stats.friedman(agree, stats.ranking(agree))
    assert info["significant"] and info["note"] == ""


# --------------------------------------------------------------------------- time-to-target


def test_time_to_target_is_the_first_evaluation_that_reached_it_even_if_it_fell_later() -> None:
    final = pd.DataFrame(
        {"run_id": ["up-down", "never"], "target": [0.9, 0.9], "metric": ["acc", "acc"],
         "higher_is_better": [True, True]}
    )  # fmt: skip
    val = schema.val_metric("acc")
    history = [("up-down", val, s, v) for s, v in [(100, 0.5), (200, 0.95), (300, 0.7)]]
    history += [("up-down", val, 400, 0.96), ("never", val, 200, 0.89)]
    history += [(r, schema.STEP_MS, s, 10.0) for r in ("up-down", "never") for s in (200, 400)]
    exp = SimpleNamespace(
        final=final, histories=pd.DataFrame(history, columns=["run_id", "key", "step", "value"])
    )
    ttt = stats.time_to_target(exp)
    assert ttt.loc["up-down"].tolist() == [200, pytest.approx(2.0)]  # 200 steps of 10 ms
    assert ttt.loc["never"].tolist() == [math.inf, math.inf]


def test_the_performance_profile_names_the_tasks_no_configuration_reached() -> None:
    inf = math.inf
    rows = [  # task, target, seeds that reached it, median seconds to target
        ("sort", 0.9, 3, 3.1), ("sort", 0.9, 1, inf),
        ("assoc_recall", 0.9, 0, inf), ("assoc_recall", 0.9, 0, inf),
        ("text_cls", 0.8, 1, inf), ("text_cls", 0.8, 0, inf),  # reached, not on the median seed
        ("lm", math.nan, 0, inf), ("lm", math.nan, 0, inf),
    ]  # fmt: skip
    table = pd.DataFrame(rows, columns=["task", "target", "reached", "ttt_seconds"])
    words = stats.unreached_targets(table)
    assert words.startswith("No configuration reached the target on assoc_recall; ")
    assert "no configuration reached it on most of its seeds on text_cls" in words
    assert "lm has no target" in words
    assert words.endswith("so no curve rises above 1/4: the profile rests on sort alone.")
    assert stats.unreached_targets(table[table.task == "sort"]) == ""
    assert stats.unreached_targets(table[table.task.isin(["sort", "lm"])]) == (
        "lm has no target, so no curve rises above 1/2: the profile rests on sort alone."
    )
    # the profile figure's caption says it
    table = table.assign(
        sweep="", attention="dot", optimizer="adam", metric_label="accuracy", n=3, diverged=0
    )
    numbers = SimpleNamespace(table=table)
    inputs = figures.Inputs(exp=None, numbers=numbers, style=None)  # type: ignore[arg-type]
    (entry,) = [e for e in figures.FIGURES if e.name == "profiles"]
    caption = entry.caption.format(**figures.Job(entry).fields(inputs))
    assert "even if it fell below it later" in caption and words in caption
    (entry,) = [e for e in figures.FIGURES if e.name == "ranking"]
    assert "drawn only when the Friedman test rejects" in entry.caption


# --------------------------------------------------------------------------- interval coverage


def _coverage_module():
    """benchmarks/interval_coverage.py (the simulation the README's figures come from)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "interval_coverage.py"
    spec = importlib.util.spec_from_file_location("interval_coverage", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # 7 cells of 2000 replications, each with a 2000-draw example bootstrap: minutes
def test_the_mean_interval_covers_and_the_interaction_corrected_one_does_not_at_three_seeds():
    """Crossed seeds x examples, 0/1 outcomes, 2000 replications (standard error of a
    coverage near 0.95: 0.005). The report's interval, which counts the seed-by-example
    interaction twice, covers at least nominally within 3 standard errors at 3, 5 and 10
    seeds; subtracting the interaction once (unbiased variance) under-covers at 3 seeds,
    so the report keeps the conservative interval."""
    sim = _coverage_module()
    floor = stats.CONFIDENCE - 3 * math.sqrt(0.95 * 0.05 / 2000)  # 0.935
    for scenario in sim.SCENARIOS[:2]:  # N = 104: seeds dominate; large interaction
        for n in (3, 5, 10):
            out = sim.coverage(scenario, n, 2000)
            assert out["report"][0] >= floor, (scenario.name, n, out)
            if n == 3:
                assert out["corrected"][0] < floor, (scenario.name, n, out)
    # what no interval from 3 seeds can do: cover a failure the seeds drawn did not show (one
    # seed in 5 stalls; with probability 0.8^3 = 0.51 none of the 3 did)
    stalls = next(s for s in sim.SCENARIOS if s.stall)
    assert sim.coverage(stalls, 3, 2000)["report"][0] < 0.6
