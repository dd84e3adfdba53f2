"""The statistics in words: the fair-comparison check on parameter counts, the summary
sentences, and the representative runs whose attention maps the report shows."""

from __future__ import annotations

from typing import Any

import pandas as pd

from harness.report.collect import Experiment
from harness.report.stats.primitives import (
    BOOT_P_NAME,
    PARAMS_TOLERANCE,
    _and,
    _fmt,
    _p_text,
)
from harness.report.stats.table import config_label
from harness.report.stats.winners import best_indices

# --------------------------------------------------------------------------- fairness, summary


def parameter_warnings(table: pd.DataFrame) -> list[str]:
    """Configurations compared within a task and sweep point whose parameter counts differ by
    more than PARAMS_TOLERANCE (Long Range Arena's 10% rule), named; one warning per distinct
    set of counts, listing where it occurs."""
    found: dict[str, list[tuple[str, str]]] = {}
    for (task, sweep), rows in table.groupby(["task", "sweep"], sort=False):
        counts = rows.dropna(subset=["n_params"])
        if len(counts) < 2:
            continue
        low, high = float(counts.n_params.min()), float(counts.n_params.max())
        if low <= 0 or high <= low * (1 + PARAMS_TOLERANCE):
            continue
        kinds = counts.drop_duplicates(["attention", "n_params"])
        listed = ", ".join(f"{r.attention} {int(r.n_params):,}" for r in kinds.itertuples())
        text = f"(max/min = {high / low:.2f}): {listed}"
        found.setdefault(text, []).append((str(task), str(sweep)))
    out = []
    for text, places in found.items():
        by_task: dict[str, list[str]] = {}
        for task, sweep in places:
            by_task.setdefault(task, []).append(sweep)
        where = ", ".join(
            task + (f" ({', '.join(s for s in sweeps if s)})" if any(sweeps) else "")
            for task, sweeps in by_task.items()
        )
        out.append(
            f"On {where}, parameter counts of compared configurations differ by more than "
            f"{PARAMS_TOLERANCE:.0%} {text}. Differences between these attention kinds mix how "
            "they score with how many parameters they have."
        )
    return out


def summary_sentences(table: pd.DataFrame, tests: pd.DataFrame, won: pd.DataFrame) -> list[str]:
    """The report's summary in plain words: per task the winner(s) with interval and n, then
    each significant corrected difference in one sentence (or why there is none)."""
    out = []
    for w in won.itertuples():
        rows = table[table.task == w.task]
        words = rows.metric_label.iloc[0]
        if not w.winners:
            out.append(f"On {w.task}, no configuration has a score.")
            continue
        each = [f"{d['name']} {_fmt(d['mean'])} ({_interval_words(d)})" for d in w.details]
        if len(w.details) == len(rows[rows.n > 0]) and len(w.details) > 1:
            out.append(
                f"On {w.task}, all configurations tie for the best {words}: " + _and(each) + "."
            )
            continue
        if len(w.details) > 1:
            who = f"{len(w.details)} configurations tie for the best {words}, "
            clauses = [f"{e}: {d['text']}" for e, d in zip(each, w.details, strict=True)]
            out.append(f"On {w.task}, {who}" + "; ".join(clauses) + ".")
        else:
            out.append(f"On {w.task}, the best {words} is {each[0]}: {w.details[0]['text']}.")
    significant = tests[tests.significant] if not tests.empty else tests
    for c in significant.itertuples():
        words = table[table.task == c.task].metric_label.iloc[0]
        a_better = c.better == c.a
        win, lose = (c.label_a, c.label_b) if a_better else (c.label_b, c.label_a)
        m_win, m_lose = (c.mean_a, c.mean_b) if a_better else (c.mean_b, c.mean_a)
        diff, low, high = (c.diff, c.diff_low, c.diff_high) if a_better else (
            -c.diff, -c.diff_high, -c.diff_low)  # fmt: skip
        pi = c.p_improve if a_better else 1 - c.p_improve
        where = f"{c.task}" + (f" at {c.sweep}" if c.sweep else "")
        out.append(
            f"On {where}, {win} beats {lose}: {words} {_fmt(m_win, 3)} vs {_fmt(m_lose, 3)} "
            f"(difference {_fmt(diff, 3)}, 95% CI {_fmt(low, 3)} to {_fmt(high, 3)}; "
            f"P(improvement) {pi:.2f}), paired p = {_p_text(c.p)} (exact permutation over seeds "
            f"{_p_text(c.p_seed)}, {BOOT_P_NAME} {_p_text(c.p_boot)}), Holm-adjusted "
            f"{_p_text(c.p_holm)}, {c.n} seeds."
        )
    if tests.empty:
        out.append("There are no pairs of configurations to compare.")
    elif significant.empty:
        out.append("No difference is significant after correction: " + _why_none(tests) + ".")
    return out


def _interval_words(d: dict[str, Any]) -> str:
    """ "95% interval 0.70 to 0.80, seeds and test set; 3 seeds (4 runs)" for one winner."""
    runs = f" ({d['runs']} runs)" if d["runs"] != d["n"] else ""
    return (
        f"95% interval {_fmt(d['ci_low'])} to {_fmt(d['ci_high'])}, {d['interval']}; "
        f"{d['n']} seed{'s' if d['n'] != 1 else ''}{runs}"
    )


def _why_none(tests: pd.DataFrame) -> str:
    """The most common reason among the comparisons, in words."""
    reasons = tests.reason[tests.reason != ""]
    if reasons.empty:
        return "the differences are within seed-to-seed and test-set variation"
    common = reasons.value_counts().index[0]
    count = int((reasons == common).sum())
    return f"{common} ({count} of {len(tests)} comparisons)"


def representative_runs(exp: Experiment, table: pd.DataFrame) -> pd.DataFrame:
    """Per task and attention kind: the final run with the median test score (the lower
    middle one for an even count) of that kind's best configuration, for the attention-map
    gallery."""
    final = exp.final
    ok = final[(final.outcome == "ok") & final.test.notna()]
    rows = []
    for (task, attention), configs in table[table.n > 0].groupby(["task", "attention"], sort=False):
        best = best_indices(configs)
        if not best:
            continue
        chosen = configs.loc[best[0]]
        runs = ok[ok.run_id.isin(chosen.run_ids)].sort_values("test", kind="stable")
        if runs.empty:
            continue
        run = runs.iloc[(len(runs) - 1) // 2]
        rows.append([task, attention, config_label(chosen), run.run_id, run.run_name, run.test])
    columns = ["task", "attention", "config", "run_id", "run_name", "test"]
    return pd.DataFrame(rows, columns=columns)
