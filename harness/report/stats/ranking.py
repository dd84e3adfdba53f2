"""Across tasks: mean ranks with bootstrap intervals, the Friedman test with the Nemenyi
critical difference, and performance profiles of time-to-target."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as st

from harness.report.stats.primitives import (
    ALPHA,
    FRIEDMAN_DRAWS,
    FRIEDMAN_MAX_PERMUTATION_TASKS,
    KEY,
    N_BOOT,
    _and,
    friedman_permutation_p,
    is_tie,
    nemenyi_cd,
    percentile_interval,
    snap,
)
from harness.report.stats.scores import Scores
from harness.report.stats.table import config_label

# --------------------------------------------------------------------------- across tasks


RANKING_COLUMNS = ["config", "mean_rank", "rank_low", "rank_high", "p_best", "tasks", "ranks",
                   "tied_with", "within_cd"]  # fmt: skip


def ranking(table: pd.DataFrame, sc: Scores | None = None) -> pd.DataFrame:
    """Mean rank over tasks of each configuration, with its 95% bootstrap interval and
    P(rank 1) from stratified two-way bootstrap replicates (per task: seeds and examples)."""
    if table.empty:
        return pd.DataFrame(columns=RANKING_COLUMNS)
    labels = list(dict.fromkeys(config_label(r) for r in table.itertuples()))
    tasks = list(dict.fromkeys(table.task))
    point = np.zeros(len(labels))
    per_task: dict[str, list[str]] = {label: [] for label in labels}
    b = min([len(u) for u in sc.task_uniforms.values()] or [N_BOOT]) if sc else N_BOOT
    boot = np.zeros((b, len(labels)))
    for task in tasks:
        rows = table[table.task == task]
        higher = bool(rows.higher_is_better.iloc[0])
        means = np.full(len(labels), math.nan)
        reps = np.full((b, len(labels)), math.nan)
        for r in rows.itertuples():
            j = labels.index(config_label(r))
            means[j] = r.mean
            if sc is not None:
                config = sc.configs.get(tuple(getattr(r, k) for k in KEY))
                if config is not None and config.n:
                    reps[:, j] = config.mean_replicates()[:b]
            else:
                reps[:, j] = r.mean
        ranks = _ranks(means[None, :], higher)[0]
        point += ranks
        boot += _ranks(reps, higher)
        for label in dict.fromkeys(config_label(r) for r in rows.itertuples()):
            per_task[label].append(f"{task}: {ranks[labels.index(label)]:g}")
    point /= len(tasks)
    boot /= len(tasks)
    best = boot.min(axis=1, keepdims=True)
    at_best = np.isclose(boot, best, rtol=0, atol=1e-9)
    p_best = (at_best / at_best.sum(axis=1, keepdims=True)).mean(axis=0)
    rows_out = []
    for j, label in enumerate(labels):
        low, high = percentile_interval(boot[:, j])
        tied = [labels[i] for i in range(len(labels)) if i != j and is_tie(point[i], point[j])]
        rows_out.append([label, point[j], low, high, float(p_best[j]), len(per_task[label]),
                         ", ".join(per_task[label]), tied, None])  # fmt: skip
    out = pd.DataFrame(rows_out, columns=RANKING_COLUMNS)
    return out.sort_values("mean_rank", kind="stable").reset_index(drop=True)


def _ranks(values: np.ndarray, higher: bool) -> np.ndarray:
    """Per row, rank 1 = best (average ranks for ties, values equal to 12 decimals being
    ties; NaN, no score, ranks last)."""
    v = np.where(np.isnan(values), -np.inf if higher else np.inf, snap(values))
    return st.rankdata(-v if higher else v, method="average", axis=1)


def friedman(table: pd.DataFrame, ranked: pd.DataFrame) -> dict[str, Any]:
    """The Friedman test over tasks as blocks, and the Nemenyi critical difference, for the
    configurations scored on every task; `why_not` when N < 3 tasks or k < 3 configurations.

    The chi-square p and the Iman-Davenport F p are always given; they are approximations that
    Demsar (2006) gives for N > 10 tasks and k > 5, so with N <= FRIEDMAN_MAX_PERMUTATION_TASKS
    the decision rests on the Monte Carlo permutation p (`friedman_permutation_p`), else on the
    Iman-Davenport F (`p` and `p_method` say which). Only when that p rejects at ALPHA are the
    critical-difference groups drawn: then ranked.within_cd marks the configurations within CD
    of the best Friedman mean rank (ranks over the configurations complete on every task), and
    `note` says so when CD separates no configuration from the best."""
    tasks = list(dict.fromkeys(table.task))
    labelled = table.assign(config=[config_label(r) for r in table.itertuples()])
    wide = labelled.pivot_table(index="task", columns="config", values="mean", aggfunc="first")
    complete = [c for c in ranked.config if c in wide.columns and wide[c].notna().all()]
    excluded = [c for c in ranked.config if c not in complete]
    n, k = len(tasks), len(complete)
    info: dict[str, Any] = {"done": False, "significant": False, "N": n, "k": k,
                            "excluded": excluded}  # fmt: skip
    if n < 3 or k < 3:
        info["why_not"] = (
            f"the Friedman test and the Nemenyi critical difference need at least 3 tasks and "
            f"3 configurations scored on every task; here {n} task(s) and {k} configuration(s)"
        )
        return info
    higher = {t: bool(table[table.task == t].higher_is_better.iloc[0]) for t in tasks}
    scores_ = np.array([[wide.loc[t, c] for c in complete] for t in tasks], dtype=float)
    ranks = np.vstack([_ranks(scores_[i][None, :], higher[t])[0] for i, t in enumerate(tasks)])
    if all(np.ptp(row) == 0 for row in snap(scores_)):
        info["why_not"] = "every configuration ties on every task: nothing to rank"
        return info
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        chi2, p_chi2 = st.friedmanchisquare(*ranks.T)
    denominator = n * (k - 1) - chi2
    if denominator > 1e-12:
        f_stat = (n - 1) * chi2 / denominator
        p_f = float(st.f.sf(f_stat, k - 1, (k - 1) * (n - 1)))
    else:  # every task ranks the configurations alike: F is infinite; the chi-square p stands
        f_stat, p_f = math.inf, float(p_chi2)
    p_f = max(p_f, float(np.finfo(float).tiny))
    if n <= FRIEDMAN_MAX_PERMUTATION_TASKS:
        p_perm = friedman_permutation_p(ranks)
        p, method = p_perm, "permutation"
    else:
        p_perm, p, method = math.nan, p_f, "Iman-Davenport"
    cd = nemenyi_cd(k, n)
    mean_ranks = dict(zip(complete, ranks.mean(axis=0), strict=True))
    top = min(mean_ranks.values())
    significant = p < ALPHA
    if significant:  # the Nemenyi post-hoc only after the Friedman test rejects (Demsar 2006)
        for i, c in enumerate(ranked.config):
            if c in mean_ranks:
                ranked.at[i, "within_cd"] = bool(mean_ranks[c] - top < cd)
    top_group = (
        [c for c, r in sorted(mean_ranks.items(), key=lambda x: x[1]) if r - top < cd]
        if significant
        else []
    )
    note = ""
    if significant and len(top_group) == k:
        note = (
            f"With {n} tasks the Nemenyi test has little power: every configuration is within "
            "CD of the best, so the Friedman rejection cannot be pinned to any pair."
        )
    info.update(
        done=True,
        F_text="infinite (every task ranks them alike; p from the chi-square)"
        if math.isinf(f_stat)
        else f"{f_stat:.2f}",
        chi2=float(chi2),
        p_chi2=float(p_chi2),
        F=float(f_stat),
        p_F=p_f,
        p_perm=p_perm,
        draws=FRIEDMAN_DRAWS,
        draws_text=f"{FRIEDMAN_DRAWS:,}",
        p=p,
        p_method=method,
        cd=cd,
        significant=significant,
        mean_ranks=mean_ranks,
        ranks_text=", ".join(
            f"{c} {r:.2f}" for c, r in sorted(mean_ranks.items(), key=lambda x: x[1])
        ),
        top_group=top_group,
        note=note,
    )
    return info


def profile_ratios(table: pd.DataFrame) -> pd.DataFrame:
    """config x task: time-to-target (seconds) over the fastest configuration on that task;
    inf where the configuration never reached the target (or nobody did)."""
    if table.empty:
        return pd.DataFrame()
    t = table.copy()
    t["config"] = [config_label(r) for r in t.itertuples()]
    wide = t.pivot_table(index="config", columns="task", values="ttt_seconds", aggfunc="first")
    wide = wide.reindex(t.config.drop_duplicates())
    best = wide.min(axis=0).replace(0, np.nan)
    return (wide / best).replace(np.nan, math.inf)


def unreached_targets(table: pd.DataFrame) -> str:
    """In words, the tasks on which no configuration has a time-to-target (median over seeds),
    so that every profile curve stays below 1 there and the profile rests on the other tasks;
    "" when every task has one. A time-to-target is the first evaluation at which the target
    was reached, even when the run fell below it later."""
    if table.empty:
        return ""
    tasks = list(dict.fromkeys(table.task))
    never, not_median, no_target = [], [], []
    for task in tasks:
        rows = table[table.task == task]
        if np.isfinite(rows.ttt_seconds.astype(float)).any():
            continue
        if rows.target.isna().all():
            no_target.append(task)
        elif rows.reached.sum() == 0:
            never.append(task)
        else:
            not_median.append(task)
    if not (never or not_median or no_target):
        return ""
    parts = []
    if never:
        parts.append(f"no configuration reached the target on {_and(never)}")
    if not_median:
        parts.append(f"no configuration reached it on most of its seeds on {_and(not_median)}")
    if no_target:
        parts.append(f"{_and(no_target)} {'has' if len(no_target) == 1 else 'have'} no target")
    rest = [t for t in tasks if t not in never + not_median + no_target]
    text = "; ".join(parts)
    if text.startswith("no "):  # a sentence's start; a task's name keeps its case
        text = "N" + text[1:]
    if not rest:
        return f"{text}: no task is left to profile."
    ceiling = f"{len(rest)}/{len(tasks)}"
    return f"{text}, so no curve rises above {ceiling}: the profile rests on {_and(rest)} alone."


def performance_profile(ratios: pd.DataFrame, taus: np.ndarray) -> pd.DataFrame:
    """rho_c(tau) for every configuration (rows) at every tau (columns)."""
    if ratios.empty:
        return pd.DataFrame()
    values = ratios.to_numpy(dtype=float)
    rho = (values[:, :, None] <= taus[None, None, :]).mean(axis=1)
    return pd.DataFrame(rho, index=ratios.index, columns=taus)
