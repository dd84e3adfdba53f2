"""Winners per task: every configuration with the best mean, judged only by the task's
pre-specified comparisons."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from harness.report.collect import Experiment
from harness.report.stats.comparisons import comparisons
from harness.report.stats.primitives import _and, _p_text, is_tie
from harness.report.stats.scores import Scores, scores
from harness.report.stats.table import config_label

# --------------------------------------------------------------------------- winners


def best_indices(configs: pd.DataFrame) -> list[Any]:
    """Indexes of every configuration with the best mean among `configs` (rows of one task;
    diverged runs already count at chance): ties are all returned. None when every run
    diverged: scores all at chance are not a tie for the best."""
    pool = configs.dropna(subset=["mean"])
    if pool.empty or _all_diverged(pool):
        return []
    higher = bool(configs.higher_is_better.iloc[0])
    best = pool["mean"].max() if higher else pool["mean"].min()
    return [i for i, v in pool["mean"].items() if is_tie(float(v), float(best))]


def _all_diverged(configs: pd.DataFrame) -> bool:
    scored = configs[configs.n > 0]
    return not scored.empty and bool((scored.diverged == scored.n).all())


WINNER_COLUMNS = ["task", "winner", "winners", "mean", "ci_low", "ci_high", "n", "runs",
                  "diverged", "interval", "not_different", "verdict", "others",
                  "details"]  # fmt: skip


def winners(
    exp: Experiment,
    table: pd.DataFrame,
    sc: Scores | None = None,
    tests: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Per task: every configuration with the best mean (ties all named) and, for each of them,
    what the task's pre-specified comparisons (`comparisons`, Holm over the task) say about it:
    which of its comparisons are significant, which are not, and which configurations it was
    never compared with directly (they differ in two factors, or in the sweep point). No other
    test is made: a winner-against-each family chosen after seeing the means would be a
    post-selection test.
    `details` holds one dict per tied winner (its own mean, interval, n and verdict)."""
    if table.empty:
        return pd.DataFrame(columns=WINNER_COLUMNS)
    if tests is None:
        tests = comparisons(exp, sc or scores(exp))
    rows = []
    for task, configs in table.groupby("task", sort=False):
        scored = configs[configs.n > 0]
        if _all_diverged(configs):  # all at chance: nothing trained, not a tie
            runs = int(scored.n.sum())
            rows.append([task, None, [], math.nan, math.nan, math.nan, runs, runs, runs, "", [],
                         f"every run of every configuration diverged ({runs} runs)", 0,
                         []])  # fmt: skip
            continue
        best = best_indices(configs)
        if not best:
            rows.append([task, None, [], math.nan, math.nan, math.nan, 0, 0, 0, "", [],
                         "no configuration has a score", 0, []])  # fmt: skip
            continue
        names = [config_label(configs.loc[i]) for i in best]
        in_task = tests[tests.task == task] if not tests.empty else tests
        all_tie = len(best) == len(scored) and len(best) > 1
        details = []
        for i in best:
            w = configs.loc[i]
            verdict = (
                {"text": "all configurations tie", "better_than": [], "not_different": [],
                 "not_compared": [], "worse_than": [], "tied_with": [n for n in names
                                                                     if n != config_label(w)]}
                if all_tie
                else _winner_verdict(w, scored.drop(index=i), in_task, names)
            )  # fmt: skip
            details.append(
                {"name": config_label(w), "mean": float(w["mean"]), "ci_low": float(w.ci_low),
                 "ci_high": float(w.ci_high), "n": int(w.n), "runs": int(w.runs),
                 "diverged": int(w.diverged), "interval": w.interval, **verdict}
            )  # fmt: skip
        first = details[0]
        winner = " and ".join(names) + (" (tie)" if len(names) > 1 else "")
        verdict_text = "; ".join(
            (f"{d['name']}: " if len(details) > 1 and not all_tie else "") + d["text"]
            for d in (details if not all_tie else details[:1])
        )
        rows.append([task, winner, names, first["mean"], first["ci_low"], first["ci_high"],
                     first["n"], first["runs"], first["diverged"], first["interval"],
                     first["not_different"], verdict_text, len(scored) - 1, details])  # fmt: skip
    return pd.DataFrame(rows, columns=WINNER_COLUMNS)


def _winner_verdict(
    w: pd.Series, others: pd.DataFrame, tests: pd.DataFrame, tied: list[str]
) -> dict[str, Any]:
    """One best configuration against every other scored one of its task, from the task's
    section-4 comparisons only."""
    me = config_label(w)
    better, worse, not_different, not_compared, ties = [], [], [], [], []
    for _, r in others.iterrows():
        other = config_label(r)
        if other in tied:
            ties.append(other)
            continue
        found = (
            tests[
                ((tests.label_a == me) & (tests.label_b == other))
                | ((tests.label_a == other) & (tests.label_b == me))
            ]
            if not tests.empty
            else tests
        )
        if found.empty:
            not_compared.append(other)
            continue
        c = found.iloc[0]
        holm_p = f"Holm p = {_p_text(c.p_holm)}"
        if c.better == "tie":
            ties.append(other)
        elif c.significant:
            winner = c.label_a if c.better == c.a else c.label_b
            (better if winner == me else worse).append(f"{other} ({holm_p})")
        else:
            why = f"; {c.reason}" if c.reason else ""
            not_different.append((other, f"{holm_p}{why}"))
    parts = []
    if better:
        every = not (worse or not_different or not_compared or ties)
        parts.append(
            "significantly better than "
            + ("every other configuration: " if every and len(better) > 1 else "")
            + _and(better)
        )
    if not_different:
        parts.append("not significantly different from " + _grouped(not_different))
    if worse:
        parts.append("significantly worse, on the seeds they share, than " + _and(worse))
    if ties:
        parts.append("tied with " + _and(ties))
    if not_compared:
        parts.append(
            "not compared directly with "
            + _and(not_compared)
            + " (they differ in two factors, or in the sweep point)"
        )
    if not parts:
        parts.append("no other configuration to compare with")
    return {
        "text": "; ".join(parts),
        "better_than": better,
        "not_different": [name for name, _ in not_different],
        "not_compared": not_compared,
        "worse_than": worse,
        "tied_with": ties,
    }


def _grouped(named: list[tuple[str, str]]) -> str:
    """Names with their notes, each note said once: "a and b (each Holm p = 1; why), or from
    c (Holm p = 0.5)". A task's comparisons often all stop for one reason."""
    notes: dict[str, list[str]] = {}
    for name, note in named:
        notes.setdefault(note, []).append(name)
    return ", or from ".join(
        f"{_and(names)} ({'each ' if len(names) > 1 else ''}{note})"
        for note, names in notes.items()
    )
