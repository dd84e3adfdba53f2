"""Scores and bootstrap draws: every final run scored (a diverged run at the task's chance
level), and each task's replicates: the runs' metric recomputed on example draws of the shared
test set from their per-example outcomes (`metric_sum` / `n_tokens`, whatever the metric)."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from harness.report.collect import Experiment
from harness.report.stats.primitives import (
    ALPHA,
    BOOT_SEED,
    CHUNK,
    KEY,
    N_BOOT,
    seed_draws,
    two_stage_interval,
    varied_interval,
)

# --------------------------------------------------------------------------- scores and draws


@dataclass
class Config:
    """One configuration's scored runs in seed order, with their bootstrap replicates."""

    key: tuple
    higher_is_better: bool
    seeds: list[int]
    run_ids: list[str]
    scores: np.ndarray  # test score per run (a diverged run: chance)
    diverged: np.ndarray  # bool per run
    with_outcomes: np.ndarray  # bool per run: its test-set variation is in the replicates
    reps: np.ndarray  # (B, n) replicate score of each run (B: the task's replicate count)
    uniforms: np.ndarray  # (B, seeds) the task's shared seed-draw uniforms

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def mean(self) -> float:
        return float(self.scores.mean()) if self.n else math.nan

    def mean_replicates(self) -> np.ndarray:
        if not self.n:
            return np.full(len(self.uniforms), math.nan)
        idx = seed_draws(self.uniforms, self.n)
        return np.take_along_axis(self.reps, idx, axis=1).mean(axis=1)

    def interval(self) -> tuple[float, float]:
        """95% interval of the mean: two seeds or more, the two-stage interval (seed variance
        plus the example-only bootstrap variance of the mean); one seed, the percentile
        interval of the example bootstrap (test set only); NaN without either, and NaN when
        nothing varies (`two_stage_interval`, `varied_interval`)."""
        if self.n == 0 or (self.n == 1 and not self.with_outcomes.all()):
            return math.nan, math.nan
        if self.n == 1:
            return varied_interval(self.reps[:, 0])
        return two_stage_interval(self.scores, self.reps.mean(axis=1))

    def interval_kind(self) -> str:
        """What the interval includes, in words, and why there is none when nothing varies."""
        if self.n == 0:
            return "no score"
        if self.diverged.all():
            return "no interval: every seed diverged (scored at chance)"
        lacking = int((~self.with_outcomes).sum())
        if self.n == 1:
            kind = "test set only (1 seed)" if lacking == 0 else "none (1 seed, no outcomes)"
        elif lacking == 0:
            kind = "seeds and test set"
        elif lacking == self.n:
            kind = "seeds only (test-set uncertainty not included)"
        else:
            kind = f"seeds; test set for {self.n - lacking} of {self.n} runs"
        if kind.startswith("none") or math.isfinite(self.interval()[0]):
            return kind
        if self.n == 1:
            return f"{kind}; no interval: resampling the test set changes nothing"
        return f"{kind}; no interval: the {self.n} seeds scored alike and nothing else varies"


@dataclass
class Scores:
    """Everything the statistics rest on: per configuration its scored runs and replicates."""

    configs: dict[tuple, Config]
    notes: list[str] = field(default_factory=list)  # said in the report's results section
    task_uniforms: dict[str, np.ndarray] = field(default_factory=dict)

    def get(self, key: tuple) -> Config | None:
        return self.configs.get(key)


def scores(exp: Experiment, n_boot: int = N_BOOT) -> Scores:
    """Score every final run (diverged at chance), and draw each task's bootstrap replicates."""
    final = exp.final
    configs: dict[tuple, Config] = {}
    notes: list[str] = []
    uniforms_by_task: dict[str, np.ndarray] = {}
    if final.empty:
        return Scores(configs, notes)
    outcomes = getattr(exp, "outcomes", {}) or {}
    for task, runs in final.groupby("task", sort=False):
        scored = _one_run_per_seed(_scored_runs(runs, notes), notes)
        rng = np.random.default_rng([BOOT_SEED, zlib.crc32(str(task).encode())])
        per_config = scored.groupby(KEY, sort=False)
        n_max = max([len(g) for _, g in per_config] + [1])
        b = replicates_for(family_size(runs), n_boot)
        uniforms = rng.random((b, n_max))
        uniforms_by_task[str(task)] = uniforms
        reps = _run_replicates(scored, outcomes, rng, b, notes, str(task))
        higher = bool(runs.higher_is_better.iloc[0])
        for key, group in runs.groupby(KEY, sort=False):
            mine = scored[scored.run_id.isin(group.run_id)].sort_values("seed", kind="stable")
            configs[tuple(key)] = Config(
                key=tuple(key),
                higher_is_better=higher,
                seeds=mine.seed.astype(int).tolist(),
                run_ids=mine.run_id.tolist(),
                scores=mine.score.to_numpy(dtype=float),
                diverged=mine.diverged.to_numpy(dtype=bool),
                with_outcomes=mine.diverged.to_numpy(dtype=bool)
                | mine.run_id.isin(reps.with_outcomes).to_numpy(),
                reps=np.column_stack([reps.values[r] for r in mine.run_id])
                if len(mine)
                else np.empty((b, 0)),
                uniforms=uniforms,
            )
    return Scores(configs, notes, uniforms_by_task)


def _one_run_per_seed(scored: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """Each configuration's newest scored run of each seed. A configuration can hold two
    final runs of one seed (its grid re-tuned to another rate and launched again into the
    experiment: another cell); they share the seed's training stream, so they are one draw
    of the seed's effect, and counted as two they would make n seeds pass for more. A note
    names the configuration and its rates."""
    newest = scored.sort_values("start_time", kind="stable").drop_duplicates(
        [*KEY, "seed"], keep="last"
    )
    if len(newest) == len(scored):
        return scored
    for key, group in scored.groupby(KEY, sort=False):
        repeated = group.seed[group.seed.duplicated()].nunique()
        if repeated:
            task, sweep, attention, optimizer = key
            rates = ", ".join(f"{lr:g}" for lr in sorted(group.lr.unique()))
            notes.append(
                f"{task}{f' at {sweep}' if sweep else ''}, {attention} + {optimizer}: "
                f"{repeated} seed{'s have' if repeated > 1 else ' has'} more than one final run "
                f"(rates {rates}); each seed counts once, by its newest run."
            )
    return scored[scored.run_id.isin(newest.run_id)]


def family_size(runs: pd.DataFrame) -> int:
    """The Holm family size of a task's runs: the comparisons `comparisons` makes (attention
    kinds within each optimizer, optimizers within each attention kind, per sweep point)."""
    configs = runs[KEY].drop_duplicates()
    m = 0
    for _, point in configs.groupby("sweep", sort=False):
        for axis, within in (("attention", "optimizer"), ("optimizer", "attention")):
            for _, same in point.groupby(within, sort=False):
                k = same[axis].nunique()
                m += k * (k - 1) // 2
    return m


def replicates_for(m: int, n_boot: int = N_BOOT) -> int:
    """Replicates for a task with m comparisons: n_boot, or 2 m / ALPHA when that is more."""
    return max(n_boot, math.ceil(2 * m / ALPHA))


def _scored_runs(runs: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """The runs that have a score: ok with a finite test metric, and diverged (at chance).
    A finished (ok) run whose test score is NaN or infinite also scores at chance, counted
    with the diverged runs, and a note names it: it is never dropped."""
    task = runs.task.iloc[0]
    finished = runs[runs.outcome == "ok"]
    finite = np.isfinite(finished.test.astype(float))
    ok, unscored = finished[finite], finished[~finite]
    diverged = pd.concat([runs[runs.outcome == "diverged"], unscored])
    if not unscored.empty:
        names = ", ".join(str(n) for n in unscored.run_name)
        notes.append(
            f"{task}: {len(unscored)} finished run(s) have no finite test score ({names}); "
            "each counts at the task's chance level like a diverged run, and is counted "
            "among the diverged runs."
        )
    out = pd.concat(
        [ok.assign(score=ok.test.astype(float), diverged=False), diverged.assign(diverged=True)]
    )
    if not diverged.empty:
        chance = [_chance(r, runs, ok, notes) for r in diverged.itertuples()]
        out.loc[out.diverged, "score"] = chance
        _no_better_than_finished(out, notes)
    lost = out[~np.isfinite(out.score.astype(float))]
    if not lost.empty:
        notes.append(
            f"{task}: {len(lost)} diverged run(s) have no chance level to score at "
            "(no data.chance and no finite score on the task); they are left out."
        )
    return out[np.isfinite(out.score.astype(float))]


def _no_better_than_finished(out: pd.DataFrame, notes: list[str]) -> None:
    """In place: a diverged run's score is at most the worst finished score of its sweep point
    (the worse of the two for the metric's direction). A run can finish worse than the chance
    level (an undertrained language model above the unigram bpc, a classifier below the
    majority class); scored at chance, a run that diverged would then rank above it. The
    bound is a function of all configurations' runs together, the same whichever
    configuration a run belongs to, so the paired tests' exchangeability is unchanged."""
    higher = bool(out.higher_is_better.iloc[0])
    for _, point in out.groupby("sweep", sort=False):
        finished = point.score[~point.diverged.astype(bool)].astype(float)
        if finished.empty:
            continue
        worst = float(finished.min() if higher else finished.max())
        gone = point.index[point.diverged.astype(bool)]
        scores = out.loc[gone, "score"].astype(float)
        above = scores > worst if higher else scores < worst
        if not above.any():
            continue
        out.loc[gone[above.to_numpy()], "score"] = worst
        task = point.task.iloc[0]
        where = f"{task}" + (f" at {point.sweep.iloc[0]}" if point.sweep.iloc[0] else "")
        notes.append(
            f"{where}: a finished run scored worse than the chance level "
            f"({point.metric.iloc[0]} {worst:.4g}); the {int(above.sum())} diverged run(s) "
            "count at that worst finished score instead, so that no diverged run ranks "
            "above a finished one."
        )


def _chance(run: Any, runs: pd.DataFrame, ok: pd.DataFrame, notes: list[str]) -> float:
    """A diverged run's score: its own data.chance, else its sweep point's, else its task's;
    else the worst value of the metric's range when that is finite (0 for a metric in [0, 1]
    where higher is better), or the worst finite score seen on the task (said in a note)."""
    if math.isfinite(run.chance):
        return float(run.chance)
    for same in (runs[runs.sweep == run.sweep], runs):
        known = same.chance[np.isfinite(same.chance.astype(float))]
        if not known.empty:
            return float(known.median())
    finite = ok.test.astype(float)
    worst = float(run.metric_low if run.higher_is_better else run.metric_high)
    if math.isfinite(worst):
        value, how = worst, f"{worst:g}, the worst value of the metric's range"
    elif finite.empty:
        return math.nan
    else:
        value = float(finite.min() if run.higher_is_better else finite.max())
        how = f"the worst finite score seen on the task ({value:.4g})"
    note = (
        f"{run.task}: data.chance is not recorded, so a diverged run counts as {how} "
        f"({run.metric})."
    )
    if note not in notes:
        notes.append(note)
    return value


@dataclass
class _Replicates:
    values: dict[str, np.ndarray]  # run_id -> (B,) replicate score
    with_outcomes: set[str]  # runs whose replicates include test-set resampling


def _run_replicates(
    scored: pd.DataFrame,
    outcomes: dict[str, dict[str, np.ndarray]],
    rng: np.random.Generator,
    n_boot: int,
    notes: list[str],
    task: str,
) -> _Replicates:
    """Each scored run's metric on every replicate's example draw (one draw per task, shared
    by all its runs): sum(w * metric_sum) / sum(w * n_tokens) with w the draw's example counts,
    which on the whole test set is the run's test metric; constant for a diverged run and for
    a run without outcomes."""
    values = {r.run_id: np.full(n_boot, float(r.score)) for r in scored.itertuples()}
    usable = []
    for r in scored[~scored.diverged].itertuples():
        out = outcomes.get(r.run_id)
        if out is not None:
            usable.append((r.run_id, r.score, out))
    if not usable:
        return _Replicates(values, set())
    lengths = pd.Series([len(o["n_tokens"]) for *_, o in usable])
    n_examples = int(lengths.mode().iloc[0])
    kept, num, den = [], [], []
    for run_id, score, out in usable:
        if len(out["n_tokens"]) != n_examples:
            continue
        top = out["metric_sum"]
        tokens = out["n_tokens"].astype(float)
        if tokens.sum() <= 0 or not math.isclose(top.sum() / tokens.sum(), score, abs_tol=1e-3):
            continue
        kept.append(run_id)
        num.append(top.astype(float))
        den.append(tokens)
    if len(kept) < len(usable):
        notes.append(
            f"{task}: {len(usable) - len(kept)} run(s) have per-example test outcomes that do "
            "not match the task's test set or their own test score; their test-set "
            "uncertainty is not included."
        )
    if not kept or n_examples == 0:
        return _Replicates(values, set())
    top_m, den_m = np.column_stack(num), np.column_stack(den)
    if np.all(den_m == den_m[:, :1]):  # the usual case: one test set, one token count each
        den_m = den_m[:, :1]
    reps = np.empty((n_boot, len(kept)))
    for start in range(0, n_boot, CHUNK):
        size = min(CHUNK, n_boot - start)
        weights = example_weights(rng, n_examples, size)
        with np.errstate(invalid="ignore", divide="ignore"):
            reps[start : start + size] = (weights @ top_m) / (weights @ den_m)
    for j, run_id in enumerate(kept):
        column = reps[:, j]
        values[run_id] = np.where(np.isfinite(column), column, values[run_id])
    return _Replicates(values, set(kept))


def example_weights(rng: np.random.Generator, n_examples: int, size: int) -> np.ndarray:
    """(size, n_examples) multinomial counts: how often each test example is drawn when
    n_examples are drawn with replacement, once per replicate."""
    draws = rng.integers(0, n_examples, size=(size, n_examples))
    flat = draws + (np.arange(size) * n_examples)[:, None]
    counts = np.bincount(flat.ravel(), minlength=size * n_examples)
    return counts.reshape(size, n_examples).astype(float)
