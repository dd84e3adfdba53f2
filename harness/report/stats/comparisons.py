"""Paired comparisons A vs B on shared seeds, with Holm's correction over each task's family."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pandas as pd

from harness.report.collect import Experiment
from harness.report.stats.primitives import (
    ALPHA,
    BOOT_P_NAME,
    KEY,
    bootstrap_p,
    holm,
    is_tie,
    percentile_interval,
    prob_improvement,
    prob_improvement_replicates,
    seed_draws,
    seeds_needed,
    sign_flip_p,
    snap,
    two_stage_interval,
    varied_interval,
)
from harness.report.stats.scores import Config, Scores, scores
from harness.report.stats.table import _label

# --------------------------------------------------------------------------- one comparison


def compare(
    a: Config, b: Config, bounds: tuple[float, float] = (-math.inf, math.inf)
) -> dict[str, Any]:
    """A vs B on the seeds both have: means, difference with its interval, P(A > B) with its
    interval, p_seed (exact sign flips), p_boot and p = max of the two.

    `bounds` is the metric's range (lo, hi): a difference of two means lies in
    [lo - hi, hi - lo], and its interval is clipped to that, as the means' intervals are
    clipped to the range (a t interval on 3 seeds can otherwise reach past +-1 accuracy)."""
    common = sorted(set(a.seeds) & set(b.seeds))
    ia = [a.seeds.index(s) for s in common]
    ib = [b.seeds.index(s) for s in common]
    x, y = a.scores[ia], b.scores[ib]
    n = len(common)
    out: dict[str, Any] = {
        "n": n,
        "diverged_a": int(a.diverged[ia].sum()),
        "diverged_b": int(b.diverged[ib].sum()),
        "mean_a": float(x.mean()) if n else math.nan,
        "mean_b": float(y.mean()) if n else math.nan,
        "with_outcomes": bool(a.with_outcomes[ia].all() and b.with_outcomes[ib].all()),
        "n_boot": len(a.uniforms),
    }
    out["diff"] = out["mean_a"] - out["mean_b"]
    nan = math.nan
    if n == 0:
        return (
            out
            | dict.fromkeys(
                [
                    "diff_low",
                    "diff_high",
                    "p_improve",
                    "pi_low",
                    "pi_high",
                    "p_seed",
                    "p_boot",
                    "p",
                ],
                nan,
            )
            | {"constant_equal": False, "all_equal": False, "n_nonzero": 0,
               "diff_interval": "no paired seeds"}
        )  # fmt: skip
    idx = seed_draws(a.uniforms, n)
    xr = np.take_along_axis(a.reps[:, ia], idx, axis=1)
    yr = np.take_along_axis(b.reps[:, ib], idx, axis=1)
    diffs = (xr - yr).mean(axis=1)  # two-way replicates: seeds and examples
    test_only = (a.reps[:, ia] - b.reps[:, ib]).mean(axis=1)  # examples only, seeds fixed
    if n == 1:
        out["diff_low"], out["diff_high"] = varied_interval(test_only)
    else:
        out["diff_low"], out["diff_high"] = two_stage_interval(x - y, test_only)
    span = bounds[1] - bounds[0]  # inf for an unbounded metric: nothing is clipped
    out["diff_low"] = max(out["diff_low"], -span)
    out["diff_high"] = min(out["diff_high"], span)
    higher = a.higher_is_better
    out["p_improve"] = prob_improvement(x, y, higher)
    out["pi_low"], out["pi_high"] = percentile_interval(prob_improvement_replicates(xr, yr, higher))
    sx, sy = snap(x), snap(y)
    out["all_equal"] = bool(np.all(sx == sy))
    out["constant_equal"] = bool(np.all(sx == sx[0]) and np.all(sy == sx[0]))
    out["n_nonzero"] = int(np.count_nonzero(snap(x - y)))
    out["diff_interval"] = _diff_interval(out, a.with_outcomes[ia], b.with_outcomes[ib])
    if n < 2:
        out |= {"p_seed": nan, "p_boot": nan, "p": nan}
        return out
    out["p_seed"] = sign_flip_p(x, y)
    out["p_boot"] = bootstrap_p(diffs)
    out["p"] = max(out["p_seed"], out["p_boot"])
    return out


def _diff_interval(c: dict[str, Any], outcomes_a: np.ndarray, outcomes_b: np.ndarray) -> str:
    """What the difference's interval includes, or why there is none (nothing varies: a
    zero-width interval would read as certainty)."""
    known = int(outcomes_a.sum() + outcomes_b.sum())
    if c["n"] == 1:
        kind = (
            "test set only (1 paired seed)" if known == 2 else "none (1 paired seed, no outcomes)"
        )
    elif known == 2 * c["n"]:
        kind = "seeds and test set"
    elif known == 0:
        kind = "seeds only (test-set uncertainty not included)"
    else:
        kind = f"seeds; test set for {known} of {2 * c['n']} runs"
    if kind.startswith("none") or math.isfinite(c["diff_low"]):
        return kind
    if c["all_equal"]:
        return "no interval: equal on every paired seed" + (" and test example" if known else "")
    if c["n"] == 1:
        return "no interval: resampling the test set changes nothing"
    return f"no interval: the {c['n']} paired differences are alike and nothing else varies"


def _reason(c: dict[str, Any], m: int) -> str:
    """Why a comparison is not significant, when the reason is structural (or which part of
    the intersection-union test held it back)."""
    if c["n"] < 2:
        return "n < 2 paired seeds"
    if c["constant_equal"]:
        return "constant and equal"
    if c["all_equal"]:
        return "equal on every paired seed"
    k = seeds_needed(m)
    nonzero = c["n_nonzero"]
    if nonzero < k:  # a zero difference cannot change sign: the smallest p is 2^(1 - nonzero)
        here = f"here {c['n']}" if nonzero == c["n"] else f"here {nonzero} of {c['n']}"
        what = "seeds" if nonzero == c["n"] else "seeds with a nonzero paired difference"
        return (
            f"with {m} comparison{'s' if m != 1 else ''}, an exact paired test needs at least "
            f"{k} {what} ({here})"
        )
    if m / c["n_boot"] >= ALPHA:
        return f"with {m} comparisons, {c['n_boot']} bootstrap replicates cannot show it"
    if c["p_boot"] > c["p_seed"]:
        return f"not confirmed by the {BOOT_P_NAME}"
    return "within seed-to-seed variation"


def _finish_family(rows: list[dict[str, Any]]) -> None:
    """Holm over the family (in place): p_holm, significant, better, reason."""
    adjusted = holm([r["p"] for r in rows])
    m = sum(1 for r in rows if not math.isnan(r["p"]))
    for r, q in zip(rows, adjusted, strict=True):
        tie = is_tie(r["mean_a"], r["mean_b"])
        r["p_holm"] = q
        r["significant"] = bool(q < ALPHA) and not tie
        if tie:
            r["better"] = "tie"
        elif math.isnan(r["diff"]):
            r["better"] = ""
        else:
            r["better"] = r["a"] if (r["diff"] > 0) == r["higher_is_better"] else r["b"]
        r["reason"] = "" if r["significant"] else _reason(r, max(m, 1))


# --------------------------------------------------------------------------- comparisons


COMPARISON_COLUMNS = [
    "task", "sweep", "kind", "within", "a", "b", "label_a", "label_b", "higher_is_better", "n",
    "diverged_a", "diverged_b", "mean_a", "mean_b", "diff", "diff_low", "diff_high",
    "p_improve", "pi_low", "pi_high", "p_seed", "p_boot", "p", "p_holm", "significant",
    "better", "reason", "with_outcomes", "n_boot", "n_nonzero", "diff_interval",
]  # fmt: skip


def comparisons(exp: Experiment, sc: Scores | None = None) -> pd.DataFrame:
    """Paired comparisons: attention kinds within an optimizer, optimizers within an attention
    kind (per task and sweep point); Holm over each task's comparisons."""
    final = exp.final
    if final.empty:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    sc = sc or scores(exp)
    present = final[KEY].drop_duplicates()
    ranges = final.groupby("task", sort=False)[["metric_low", "metric_high"]].first()
    out: list[dict[str, Any]] = []
    for task, in_task in present.groupby("task", sort=False):
        bounds = (float(ranges.metric_low[task]), float(ranges.metric_high[task]))
        family: list[dict[str, Any]] = []
        for sweep, configs in in_task.groupby("sweep", sort=False):
            for axis, within_axis in (("attention", "optimizer"), ("optimizer", "attention")):
                for within, same in configs.groupby(within_axis, sort=False):
                    for a, b in itertools.combinations(same[axis].tolist(), 2):
                        ka = _key(task, sweep, axis, a, within_axis, within)
                        kb = _key(task, sweep, axis, b, within_axis, within)
                        ca, cb = sc.configs[ka], sc.configs[kb]
                        family.append(
                            {"task": task, "sweep": sweep, "kind": f"{axis} within {within_axis}",
                             "within": within, "a": a, "b": b, "label_a": _label(ka),
                             "label_b": _label(kb), "higher_is_better": ca.higher_is_better,
                             **compare(ca, cb, bounds)}
                        )  # fmt: skip
        _finish_family(family)
        out.extend(family)
    return pd.DataFrame(out, columns=COMPARISON_COLUMNS)


def _key(task: str, sweep: str, axis: str, value: str, other_axis: str, other: str) -> tuple:
    named = {"task": task, "sweep": sweep, axis: value, other_axis: other}
    return tuple(named[k] for k in KEY)
