"""The results table: one row per configuration with its mean, interval, facts about the runs,
time-to-target (AlgoPerf) and throughput."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness import schema
from harness.report.collect import Experiment
from harness.report.stats.primitives import KEY
from harness.report.stats.scores import Scores, scores

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
        val = frame[frame.key == schema.val_metric(run.metric)].sort_values("step")
        reached = val.value >= run.target if run.higher_is_better else val.value <= run.target
        if not reached.any():
            continue
        step = int(val.step[reached].iloc[0])
        out.loc[run.run_id] = (step, training_seconds(frame[frame.key == schema.STEP_MS], step))
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


RESULT_COLUMNS = [
    *KEY,
    "metric",
    "metric_label",  # how the report names the metric (tag harness.metric_label)
    "metric_low",  # the metric's range (tag harness.metric_bounds): intervals are clipped to it
    "metric_high",
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
    "interval",
    "n_params",
    "n_train",
    "n_val",
    "n_test",
    "chance",
    "ttt_steps",
    "ttt_seconds",
    "reached",
    "tokens_per_s",
    "run_ids",
    "sweep_values",
]


def results_table(exp: Experiment, sc: Scores | None = None) -> pd.DataFrame:
    """One row per configuration (KEY), in grid order, from its final runs: n scored runs
    (diverged ones at chance), their mean and its 95% interval (`two_stage_interval`)."""
    final = exp.final
    if final.empty:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    sc = sc or scores(exp)
    ttt = time_to_target(exp)
    throughput = _median_throughput(exp)
    rows = []
    for key, runs in final.groupby(KEY, sort=False):
        config = sc.configs[tuple(key)]
        low, high = config.interval()
        floor, ceiling = runs.metric_low.iloc[0], runs.metric_high.iloc[0]
        low, high = max(low, floor), min(high, ceiling)  # NaN stays NaN
        times = ttt.loc[runs.run_id]
        rows.append(
            [
                *key,
                runs.metric.iloc[0],
                runs.metric_label.iloc[0],
                floor,
                ceiling,
                bool(runs.higher_is_better.iloc[0]),
                runs.target.iloc[0],
                ", ".join(f"{lr:g}" for lr in sorted(runs.lr.unique())),
                len(runs),
                config.n,
                int(config.diverged.sum()),
                config.mean,
                float(np.std(config.scores, ddof=1)) if config.n > 1 else math.nan,
                low,
                high,
                config.interval_kind(),
                _fact(runs.n_params),
                _fact(runs.n_train),
                _fact(runs.n_val),
                _fact(runs.n_test),
                _fact(runs.chance),
                float(np.median(times.ttt_steps)),
                float(np.median(times.ttt_seconds)),
                int(np.isfinite(times.ttt_steps).sum()),
                float(np.nanmedian(throughput.reindex(runs.run_id)))
                if not throughput.empty and throughput.reindex(runs.run_id).notna().any()
                else math.nan,
                runs.run_id.tolist(),
                runs.sweep_values.iloc[0],
            ]
        )
    return pd.DataFrame(rows, columns=RESULT_COLUMNS)


def _fact(values: pd.Series) -> float:
    """A per-run fact (parameter count, split size, chance) of a configuration: the median of
    the runs that recorded it (they agree); NaN when none did."""
    v = values.astype(float)
    v = v[np.isfinite(v)]
    return float(v.median()) if not v.empty else math.nan


def _median_throughput(exp: Experiment) -> pd.Series:
    """run_id -> median tokens/s over the run's logged windows."""
    hist = exp.histories
    points = hist[hist.key == schema.THROUGHPUT]
    return points.groupby("run_id").value.median()


def config_label(row: pd.Series | tuple) -> str:
    """ "multihead + adam" (with " [model.d_k=32]" in a sweep)."""
    label = f"{row.attention} + {row.optimizer}"
    return f"{label} [{row.sweep}]" if row.sweep else label


def _label(key: tuple) -> str:
    named = dict(zip(KEY, key, strict=True))
    label = f"{named['attention']} + {named['optimizer']}"
    return f"{label} [{named['sweep']}]" if named["sweep"] else label
