"""The report's numbers: per-configuration summaries, time-to-target, tests, rankings, profiles.

A configuration is task x sweep point x attention x optimizer (`KEY`); its numbers come from
its final-phase runs, one per seed, scored on held-out test data (`test/acc` or `test/bpc`).

- Mean, sample standard deviation and a 95% confidence interval from Student's t with n-1
  degrees of freedom, over the seeds whose run finished without diverging (n). A run that
  diverged has no test score: it is counted apart and makes its configuration ineligible to win.
- Time-to-target (AlgoPerf, Dahl et al. 2023, "Benchmarking Neural Network Training
  Algorithms"): the first validation step at which the metric reaches the task's target, and
  the training seconds up to it (the sum of `time/step_ms` over the steps, evaluation time
  excluded). A configuration's value is the median over its seeds, a seed that never reached
  the target counting as infinitely slow; an infinite median reads "not reached".
- Pairwise comparisons: Welch's unequal-variance t-test (two-sided) on the test scores of two
  configurations, attention kinds within each optimizer and optimizers within each attention
  kind, with Holm's step-down correction (Holm 1979) over all comparisons of a task.
- Ranking: per task, configurations ranked by mean test score (ties share the average rank;
  a configuration without a score ranks last); the table sorts by the mean rank over tasks.
- Performance profiles (Dolan and Moré 2002, as used by AlgoPerf): for configuration c,
  rho_c(tau) is the fraction of tasks on which c's time-to-target is within a factor tau of
  the fastest configuration on that task.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as st

from harness.report.collect import STEP_MS, Experiment

KEY = ["task", "sweep", "attention", "optimizer"]
ALPHA = 0.05
CONFIDENCE = 0.95


# --------------------------------------------------------------------------- single numbers


def mean_ci(values: Sequence[float], level: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high) of the t-based confidence interval; low = high = NaN when n < 2."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    half = st.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return mean, mean - float(half), mean + float(half)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test; NaN with fewer than two values on a side.

    With no spread on either side scipy has no answer: identical constants give p = 1 and
    different constants p = 0 (every seed of one beat every seed of the other, exactly)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size < 2 or y.size < 2:
        return math.nan
    if _constant(x) and _constant(y):
        return 1.0 if math.isclose(x.mean(), y.mean(), abs_tol=1e-12) else 0.0
    with warnings.catch_warnings():  # nearly-constant samples: scipy warns, the p is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(st.ttest_ind(x, y, equal_var=False).pvalue)


def _constant(x: np.ndarray) -> bool:
    """No spread beyond float rounding (accuracies of 1.0 summed in another order, say)."""
    return float(np.ptp(x)) <= 1e-12 * max(1.0, float(np.abs(x).max()))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values; NaN stays NaN and is not counted in the family."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, math.nan)
    index = np.flatnonzero(~np.isnan(p))
    order = index[np.argsort(p[index], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


# --------------------------------------------------------------------------- time-to-target


def time_to_target(exp: Experiment) -> pd.DataFrame:
    """Per final run: `ttt_steps` and `ttt_seconds` (inf when the target was never reached)."""
    final = exp.final
    hist = exp.histories
    out = pd.DataFrame({"run_id": final.run_id, "ttt_steps": math.inf, "ttt_seconds": math.inf})
    out = out.set_index("run_id")
    if hist.empty or final.empty:
        return out
    by_run = {run_id: frame for run_id, frame in hist.groupby("run_id", sort=False)}
    for run in final.itertuples():
        frame = by_run.get(run.run_id)
        if frame is None or math.isnan(run.target):
            continue
        val = frame[frame.key == f"val/{run.metric}"].sort_values("step")
        reached = val.value >= run.target if run.higher_is_better else val.value <= run.target
        if not reached.any():
            continue
        step = int(val.step[reached].iloc[0])
        out.loc[run.run_id] = (step, training_seconds(frame[frame.key == STEP_MS], step))
    return out


def training_seconds(step_ms: pd.DataFrame, step: int) -> float:
    """Seconds of training up to `step` from `time/step_ms` points, each the mean step time of
    the window of steps since the previous point (so a point at step s covers (prev, s])."""
    points = step_ms.sort_values("step")
    ends = points.step.to_numpy(dtype=float)
    ms = points.value.to_numpy(dtype=float)
    if ends.size == 0:
        return math.nan
    starts = np.concatenate([[0.0], ends[:-1]])
    covered = np.clip(np.minimum(ends, step) - starts, 0, None)
    seconds = float((covered * ms).sum() / 1000)
    if step > ends[-1]:  # past the last point: extrapolate at the last window's pace
        seconds += (step - ends[-1]) * ms[-1] / 1000
    return seconds


# --------------------------------------------------------------------------- the results table


def results_table(exp: Experiment) -> pd.DataFrame:
    """One row per configuration (KEY), in grid order, from its final runs."""
    final = exp.final
    columns = [
        *KEY,
        "metric",
        "higher_is_better",
        "target",
        "lr",
        "runs",
        "n",
        "diverged",
        "mean",
        "std",
        "ci_low",
        "ci_high",
        "ttt_steps",
        "ttt_seconds",
        "reached",
        "tokens_per_s",
        "run_ids",
        "sweep_values",
    ]
    if final.empty:
        return pd.DataFrame(columns=columns)
    ttt = time_to_target(exp)
    throughput = _median_throughput(exp)
    rows = []
    for key, runs in final.groupby(KEY, sort=False):
        ok = runs[(runs.outcome == "ok") & runs.test.notna()]
        scores = ok.test.tolist()
        mean, low, high = mean_ci(scores)
        times = ttt.loc[runs.run_id]
        rows.append(
            [
                *key,
                runs.metric.iloc[0],
                bool(runs.higher_is_better.iloc[0]),
                runs.target.iloc[0],
                ", ".join(f"{lr:g}" for lr in sorted(runs.lr.unique())),
                len(runs),
                len(scores),
                int((runs.outcome == "diverged").sum()),
                mean,
                float(np.std(scores, ddof=1)) if len(scores) > 1 else math.nan,
                low,
                high,
                float(np.median(times.ttt_steps)),
                float(np.median(times.ttt_seconds)),
                int(np.isfinite(times.ttt_steps).sum()),
                float(np.nanmedian(throughput.reindex(runs.run_id)))
                if not throughput.empty
                else math.nan,
                runs.run_id.tolist(),
                runs.sweep_values.iloc[0],
            ]
        )
    return pd.DataFrame(rows, columns=columns)


def _median_throughput(exp: Experiment) -> pd.Series:
    """run_id -> median tokens/s over the run's logged windows."""
    hist = exp.histories
    points = hist[hist.key == "throughput/tokens_per_s"]
    return points.groupby("run_id").value.median()


def config_label(row: pd.Series | tuple) -> str:
    """ "multihead + adam" (with " [model.d_k=32]" in a sweep)."""
    label = f"{row.attention} + {row.optimizer}"
    return f"{label} [{row.sweep}]" if row.sweep else label


# --------------------------------------------------------------------------- comparisons


def comparisons(exp: Experiment) -> pd.DataFrame:
    """Pairwise Welch tests: attention kinds within an optimizer, optimizers within an attention
    kind (per task and sweep point), Holm-corrected over each task's comparisons."""
    final = exp.final
    ok = final[(final.outcome == "ok") & final.test.notna()]
    scores = {key: runs.test.tolist() for key, runs in ok.groupby(KEY, sort=False)}
    present = final[KEY].drop_duplicates()
    rows = []
    for (task, sweep), configs in present.groupby(["task", "sweep"], sort=False):
        higher = bool(final[final.task == task].higher_is_better.iloc[0])
        for axis, within_axis in (("attention", "optimizer"), ("optimizer", "attention")):
            for within, same in configs.groupby(within_axis, sort=False):
                for a, b in itertools.combinations(same[axis].tolist(), 2):
                    ka = _key(task, sweep, axis, a, within_axis, within)
                    kb = _key(task, sweep, axis, b, within_axis, within)
                    xa, xb = scores.get(ka, []), scores.get(kb, [])
                    ma, mb = _mean(xa), _mean(xb)
                    better = a if (ma > mb) == higher else b
                    rows.append(
                        [task, sweep, f"{axis} within {within_axis}", within, a, b, ma, mb,
                         ma - mb, len(xa), len(xb), welch_p(xa, xb),
                         better if not math.isclose(ma, mb) else "tie"]
                    )  # fmt: skip
    columns = ["task", "sweep", "kind", "within", "a", "b", "mean_a", "mean_b", "diff", "n_a",
               "n_b", "p", "better"]  # fmt: skip
    table = pd.DataFrame(rows, columns=columns)
    table["p_holm"] = math.nan
    for _, index in table.groupby("task", sort=False).groups.items():
        table.loc[index, "p_holm"] = holm(table.loc[index, "p"].tolist())
    table["significant"] = table.p_holm < ALPHA
    return table


def _key(task: str, sweep: str, axis: str, value: str, other_axis: str, other: str) -> tuple:
    named = {"task": task, "sweep": sweep, axis: value, other_axis: other}
    return tuple(named[k] for k in KEY)


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


# --------------------------------------------------------------------------- winners


def best_index(configs: pd.DataFrame, eligible_only: bool = True) -> Any:
    """Index of the best mean among `configs` (rows of one task); None when none qualifies.
    Eligible: every seed finished without diverging (n == runs > 0)."""
    pool = configs[(configs.n > 0) & (configs.n == configs.runs)] if eligible_only else configs
    pool = pool.dropna(subset=["mean"])
    if pool.empty:
        return None
    higher = bool(configs.higher_is_better.iloc[0])
    return pool["mean"].idxmax() if higher else pool["mean"].idxmin()


def winners(exp: Experiment, table: pd.DataFrame) -> pd.DataFrame:
    """Per task: the best eligible configuration (every seed finished without diverging) and
    the configurations it cannot be told apart from (Holm-adjusted Welch p >= ALPHA over the
    winner-against-each-other comparisons of that task)."""
    final = exp.final
    ok = final[(final.outcome == "ok") & final.test.notna()]
    scores = {key: runs.test.tolist() for key, runs in ok.groupby(KEY, sort=False)}
    rows = []
    for task, configs in table.groupby("task", sort=False):
        index = best_index(configs)
        if index is None:
            rows.append([task, None, math.nan, math.nan, math.nan, 0, [], "no configuration "
                         "finished all its seeds"])  # fmt: skip
            continue
        best = configs.loc[index]
        best_key = tuple(best[k] for k in KEY)
        others = [r for r in configs.itertuples() if tuple(getattr(r, k) for k in KEY) != best_key]
        p = holm([welch_p(scores[best_key], scores.get(_tuple(r), [])) for r in others])
        tied = [config_label(r) for r, q in zip(others, p, strict=True) if not q < ALPHA]
        if best.n < 2:
            verdict = "one seed only: no confidence interval, no test"
        elif not tied:
            verdict = "better than every other configuration (Holm-adjusted Welch p < 0.05)"
        else:
            verdict = (
                f"not distinguishable (Holm-adjusted Welch p >= 0.05) from {len(tied)} of "
                f"{len(others)} other configuration(s)"
            )
        if 2 <= best.n < 5:
            verdict += f"; with {int(best.n)} seeds the tests have little power"
        rows.append([task, config_label(best), best["mean"], best.ci_low, best.ci_high,
                     int(best.n), tied, verdict])  # fmt: skip
    columns = ["task", "winner", "mean", "ci_low", "ci_high", "n", "tied", "verdict"]
    return pd.DataFrame(rows, columns=columns)


def _tuple(row: tuple) -> tuple:
    return tuple(getattr(row, k) for k in KEY)


# --------------------------------------------------------------------------- across tasks


def ranking(table: pd.DataFrame) -> pd.DataFrame:
    """Mean rank of each configuration (attention x optimizer x sweep point) over the tasks."""
    if table.empty:
        return pd.DataFrame(columns=["config", "mean_rank", "tasks", "ranks"])
    ranked = table.copy()
    ranked["config"] = [config_label(r) for r in ranked.itertuples()]
    ranked["score"] = np.where(ranked.higher_is_better, -ranked["mean"], ranked["mean"])
    ranked["rank"] = ranked.groupby("task").score.rank(method="average", na_option="bottom")
    out = ranked.groupby("config", sort=False).agg(
        mean_rank=("rank", "mean"), tasks=("task", "nunique")
    )
    out["ranks"] = ranked.groupby("config", sort=False).apply(
        lambda g: ", ".join(f"{t}: {r:g}" for t, r in zip(g.task, g["rank"], strict=True)),
        include_groups=False,
    )
    return out.sort_values("mean_rank", kind="stable").reset_index()


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


def performance_profile(ratios: pd.DataFrame, taus: np.ndarray) -> pd.DataFrame:
    """rho_c(tau) for every configuration (rows) at every tau (columns)."""
    if ratios.empty:
        return pd.DataFrame()
    values = ratios.to_numpy(dtype=float)
    rho = (values[:, :, None] <= taus[None, None, :]).mean(axis=1)
    return pd.DataFrame(rho, index=ratios.index, columns=taus)


def representative_runs(exp: Experiment, table: pd.DataFrame) -> pd.DataFrame:
    """Per task and attention kind: the final run with the median test score (the lower
    middle one for an even count) of that kind's best configuration, for the attention-map
    gallery."""
    final = exp.final
    ok = final[(final.outcome == "ok") & final.test.notna()]
    rows = []
    for (task, attention), configs in table[table.n > 0].groupby(["task", "attention"], sort=False):
        best = configs.loc[best_index(configs, eligible_only=False)]
        runs = ok[ok.run_id.isin(best.run_ids)].sort_values("test", kind="stable")
        if runs.empty:
            continue
        run = runs.iloc[(len(runs) - 1) // 2]
        rows.append([task, attention, config_label(best), run.run_id, run.run_name, run.test])
    columns = ["task", "attention", "config", "run_id", "run_name", "test"]
    return pd.DataFrame(rows, columns=columns)
