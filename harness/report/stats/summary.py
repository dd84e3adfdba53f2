"""The statistics in words: the fair-comparison check on parameter counts, the summary
sentences, and the representative runs whose attention maps the report shows."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from harness.report.collect import Experiment
from harness.report.stats.primitives import (
    ALPHA,
    BOOT_P_NAME,
    FEW_SEEDS,
    PARAMS_TOLERANCE,
    _and,
    _fmt,
    _p_text,
    seeds_needed,
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
    """The report's summary in plain words: first, when the design lets no test reject on some
    task, that fact (`design_limits`); then per task the winner(s) with interval and n, then
    each significant corrected difference in one sentence (or why there is none)."""
    blocked = untestable_tasks(tests)
    out = [design_limits(tests)] if blocked else []
    for w in won.itertuples():
        rows = table[table.task == w.task]
        words = rows.metric_label.iloc[0]
        if not w.winners and w.n:
            out.append(
                f"On {w.task}, every run of every configuration diverged ({w.n} runs, each "
                "counted at the chance level): there is no best configuration."
            )
            continue
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
        ci = (
            f"95% CI {_fmt(low, 3)} to {_fmt(high, 3)}"
            if math.isfinite(low) and math.isfinite(high)
            else c.diff_interval
        )
        out.append(
            f"On {where}, {win} beats {lose}: {words} {_fmt(m_win, 3)} vs {_fmt(m_lose, 3)} "
            f"(difference {_fmt(diff, 3)}, {ci}; "
            f"P(improvement) {pi:.2f}; unadjusted intervals), paired p = {_p_text(c.p)} (the "
            f"exact permutation test over seeds, which sets the level, {_p_text(c.p_seed)}; the "
            f"{BOOT_P_NAME} check {_p_text(c.p_boot)}), Holm-adjusted {_p_text(c.p_holm)}, "
            f"{c.n} seeds."
        )
    if tests.empty:
        out.append("There are no pairs of configurations to compare.")
    elif significant.empty:
        rest = tests[~tests.task.isin(blocked)]
        if not rest.empty:  # the tasks the design lets no test reject on are said up front
            out.append("No difference is significant after correction: " + _why_none(rest) + ".")
    return out


def untestable_tasks(tests: pd.DataFrame) -> list[str]:
    """The tasks on which no comparison can be significant whatever the data: the exact
    paired test's smallest p with n seeds, 2^(1-n), times the task's Holm family size m is at
    least ALPHA for every comparison (n the most paired seeds of any of them; a task whose
    comparisons all have fewer than 2 paired seeds has no test at all)."""
    out = []
    for task, rows in tests.groupby("task", sort=False) if not tests.empty else []:
        tested = rows[rows.p.notna()]
        m = len(tested)
        if m == 0 or 2.0 ** (1 - int(tested.n.max())) * m >= ALPHA:
            out.append(str(task))
    return out


def design_limits(tests: pd.DataFrame) -> str:
    """The summary's first sentence when the design lets no test reject on some task: said as
    a property of the design, not as a finding ("with 3 seeds and 48 comparisons per task no
    test here can reject; read the intervals")."""
    blocked = untestable_tasks(tests)
    if not blocked:
        return ""
    rows = tests[tests.task.isin(blocked) & tests.p.notna()]
    where = "here" if len(blocked) == tests.task.nunique() else f"on {_and(blocked)}"
    if rows.empty:
        return (
            f"No comparison {where} can be tested: no pair of configurations shares 2 seeds. "
            "Read the differences and their intervals in section 4."
        )
    per_task = rows.groupby("task", sort=False).agg(n=("n", "max"), m=("p", "size"))
    designs: dict[tuple[int, int], list[str]] = {}
    for task, r in per_task.iterrows():
        designs.setdefault((int(r.n), int(r.m)), []).append(str(task))
    why = (
        "the exact paired test's smallest possible p, 2^(1-n) with n seeds, times the m "
        f"comparisons of Holm's first step is at least α = {ALPHA:g}"
    )
    if len(designs) == 1:
        ((n, m),) = designs
        family = " per task" if len(per_task) > 1 else ""
        why = (
            f"the exact paired test's smallest possible p, 2^(1-{n}) = {_fmt(2.0 ** (1 - n), 3)}, "
            f"times m = {m} (Holm's first step) is at least α = {ALPHA:g} (at least "
            f"{seeds_needed(m)} seeds would be needed)"
        )
        design = f"{_seeds(n)} and {_comparisons(m)}{family}"
    else:
        design = "; ".join(
            f"{_seeds(n)} and {_comparisons(m)} on {_and(tasks)}"
            for (n, m), tasks in designs.items()
        )
    return (
        f"With {design}, no test {where} can reject: {why}. This is a property of the design, "
        "not a finding that the configurations perform alike: read the differences and their "
        "intervals (section 4)."
    )


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def _comparisons(m: int) -> str:
    return f"{m} comparison{'s' if m != 1 else ''}"


def few_seeds_caveat(table: pd.DataFrame) -> str:
    """ "with 3 seeds ... too narrow and too sure" when the fewest seeds of a scored
    configuration is below FEW_SEEDS: the words the ranking's intervals and P(rank 1) need
    wherever they are shown; "" otherwise."""
    scored = table[table.n > 0] if not table.empty else table
    if scored.empty:
        return ""
    low, high = int(scored.n.min()), int(scored.n.max())
    if low >= FEW_SEEDS:
        return ""
    seeds = f"{_seeds(low)} per configuration" if low == high else (
        f"as few as {_seeds(low)} for some configurations")  # fmt: skip
    return (
        f"with {seeds} (fewer than {FEW_SEEDS}) the seed bootstrap behind "
        "this interval and P(rank 1) understates seed-to-seed variation: both are too narrow "
        "and too sure"
    )


def _interval_words(d: dict[str, Any]) -> str:
    """ "95% interval 0.70 to 0.80, seeds and test set; 3 seeds (4 runs)" for one winner."""
    runs = f" ({d['runs']} runs)" if d["runs"] != d["n"] else ""
    seeds = f"{d['n']} seed{'s' if d['n'] != 1 else ''}{runs}"
    if not (math.isfinite(d["ci_low"]) and math.isfinite(d["ci_high"])):
        why = d["interval"].split("no interval: ", 1)[-1]
        return f"no interval: {why}; {seeds}"
    return f"95% interval {_fmt(d['ci_low'])} to {_fmt(d['ci_high'])}, {d['interval']}; {seeds}"


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
