"""The report's numbers: per-configuration scores and intervals, paired tests, winners, rankings.

A configuration is task x sweep point x attention x optimizer (`KEY`); its numbers come from
its final-phase runs, one per seed, scored on held-out test data (`test/acc` or `test/bpc`).
Runs of a task share one test set (example i is the same in every run) and runs with the same
seed share the training stream, so runs PAIR BY SEED across configurations.

Scores. A run's score is its test metric. A diverged run is never dropped: it scores the
task's chance level (param `data.chance`: chance accuracy, or the unigram bpc). Without that
param (older runs) it scores 0.0 accuracy, or the worst finite score seen on the task, and the
report says so. Failed, killed and missing cells are not scores; section 5 lists them.

Intervals of a configuration's mean, a stated parametric method built on the two variance
components of a two-stage sample (seeds, then test examples; Cochran 1977, "Sampling
Techniques", 3rd ed., ch. 10): mean +- t_df sqrt(s_seed^2 / n + v_test), where s_seed^2 is the
sample variance (ddof 1) of the per-seed scores and v_test the variance of the configuration
mean over example-only bootstrap replicates (`N_BOOT` draws of the test examples with
replacement, seeds held fixed; each run's metric recomputed on the drawn examples from its
`test_outcomes.json`; a diverged seed keeps its constant chance score). df is Welch-
Satterthwaite's with v_test taken as known (it rests on the whole test set): n - 1 when the
seeds dominate, large when the test set does. The seed bootstrap this replaces under-covered
at 2 to 4 seeds (62%, 81%, 84% when seed variance dominates). One seed: the percentile
interval of the example bootstrap ("test set only (1 seed)"). Runs without per-example
outcomes: v_test = 0 ("seeds only"). The mean's interval is clipped to the metric's range
([0, 1] accuracy, [0, inf) bpc). Paired differences alike: dbar +- t_df sqrt(s_d^2 / n +
v_test(dbar)). Every configuration of a task sees the same example draws, so differences are
coherent; the generator is seeded (`BOOT_SEED`, and the task's name): a report is
reproducible.

The two-way ("pigeonhole") bootstrap of Owen (2007, "The pigeonhole bootstrap", Ann. Appl.
Stat. 1(2):386-411) draws seeds with replacement (by position in seed order, shared by all
configurations of a task) and, independently, the same test examples: it gives p_boot, the
interval of P(A > B), and the rank intervals and P(rank 1). Below 5 seeds these understate
seed-to-seed variation (a seed bootstrap of few seeds is too narrow), and the report says so.

Comparisons A vs B (same task and sweep point: attention kinds within an optimizer, optimizers
within an attention kind), on the seeds both have:
- effect sizes: diff = mean_A - mean_B with its two-stage interval (above); the probability of
  improvement P(A > B) of Agarwal et al. (2021, "Deep reinforcement learning at the edge of the
  statistical precipice", NeurIPS; the `rliable` library): the share of (A run, B run) pairs in
  which A is better, ties counting half, i.e. the Mann-Whitney U over n_A n_B
  (scipy.stats.mannwhitneyu), with its interval from the two-way bootstrap replicates.
- p_seed: the exact two-sided paired sign-flip permutation test of the mean difference: all
  2^n sign assignments enumerated up to `EXACT_MAX_SEEDS` seeds, `RANDOM_RESAMPLES` random
  ones beyond (p = (1 + count) / (1 + R)), on differences rounded to 12 decimals. Valid at any
  n; its smallest value is 2^(1-n') with n' the NONZERO differences (0.5 with 2, 0.03125 with
  6; a zero difference cannot change sign). No test below 2 seeds; all differences zero gives
  p = 1. No p-value here is ever 0.
- p_boot, the "two-way bootstrap (seeds and test set)" p: twice the smaller share of two-way
  bootstrap replicates on either side of 0, at least 1/B: does the difference survive
  resampling both the seeds and the test set?
  B is N_BOOT, or 2 m / ALPHA on a task with m comparisons when that is more, so that the
  floor 1/B never decides a Holm-corrected test.
- p = max(p_seed, p_boot): an intersection-union test (Berger 1982, "Multiparameter hypothesis
  testing and acceptance sampling", Technometrics 24(4)): a difference is called only when it
  survives both; the level stays alpha because each part is a level-alpha test.
- Holm's step-down correction (Holm 1979, Scand. J. Statist. 6(2)) over all comparisons of a
  task (the family is the task); significant = Holm-adjusted p < ALPHA. With m comparisons the
  first Holm step needs 2^(1-n') m < ALPHA, hence "needs at least k seeds" (n': the nonzero
  paired differences).
- ties: values equal to 12 decimals (`snap`; `is_tie`: 1e-12 relative) are equal everywhere:
  tied means are named, never a winner over each other; ranks and P(A > B) count them as ties.

Winners: per task, every configuration with the best mean (ties all named, each with its own
interval) and, for each, what its pre-specified comparisons above say (significant or not,
Holm over the task); configurations differing from it in two factors are "not compared
directly". No winner-against-each test: chosen after seeing the means, it would be a
post-selection test.

Ranking across tasks (Demsar 2006, "Statistical comparisons of classifiers over multiple data
sets", JMLR 7): per task configurations are ranked by mean (ties share the average rank; a
configuration absent from a task ranks last), then averaged over tasks. The 95% interval of the
mean rank and P(rank 1) come from the same stratified (per task) two-way bootstrap replicates.
With N >= 3 tasks and k >= 3 configurations present on every task: the Friedman test
(scipy.stats.friedmanchisquare) with the Iman-Davenport F correction, and the Nemenyi critical
difference CD = q_alpha sqrt(k (k + 1) / (6 N)), q_alpha = studentized range(0.95; k, inf)/sqrt(2),
whose groups are drawn only when the Friedman (Iman-Davenport) test rejects at ALPHA; else the
configurations are said to be not distinguishable. CD applies to the Friedman ranks (over the
configurations complete on every task), shown beside it.

Fair-comparison check: configurations compared within a task and sweep point whose parameter
counts (`model.n_params`) differ by more than 10% are named (the rule of Long Range Arena, Tay
et al. 2021, "Long Range Arena: a benchmark for efficient transformers", ICLR).

Time-to-target (AlgoPerf, Dahl et al. 2023, "Benchmarking Neural Network Training Algorithms"):
the first validation step at which the metric reaches the task's target, and the training
seconds up to it (the sum of `time/step_ms`, evaluation excluded). A configuration's value is
the median over its seeds, a seed that never reached the target counting as infinitely slow.
Performance profiles (Dolan and More 2002): rho_c(tau) is the fraction of tasks on which c's
time-to-target is within a factor tau of the fastest configuration on that task.
"""

from __future__ import annotations

import itertools
import math
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as st

from harness.report.collect import STEP_MS, Experiment

KEY = ["task", "sweep", "attention", "optimizer"]
ALPHA = 0.05
CONFIDENCE = 0.95
N_BOOT = 2000  # bootstrap replicates (two-way: seeds and test examples), at least
# more on a task with many comparisons: B >= 2 m / ALPHA, so that the smallest bootstrap p,
# 1/B, can pass the first step of Holm's correction over the task's m comparisons
BOOT_SEED = 20070601  # the report's bootstrap generator seed (with the task's name)
CHUNK = 250  # replicates whose example weights are held in memory at once
EXACT_MAX_SEEDS = 16  # exact sign-flip test (2^n assignments) up to here, random beyond
RANDOM_RESAMPLES = 9999
TIE_RTOL = 1e-12  # equal means (relative): a tie
PARAMS_TOLERANCE = 0.10  # Long Range Arena's rule for comparable parameter counts
LN2 = math.log(2.0)
BOOT_P_NAME = "two-way bootstrap (seeds and test set)"  # what p_boot is, in words


# --------------------------------------------------------------------------- small pieces


def is_tie(a: float, b: float) -> bool:
    """Equal to TIE_RTOL (relative); two NaNs are not a tie."""
    return math.isclose(a, b, rel_tol=TIE_RTOL, abs_tol=1e-300)


def percentile_interval(values: np.ndarray, level: float = CONFIDENCE) -> tuple[float, float]:
    """(low, high) percentile interval of bootstrap replicates; NaN without replicates."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(v, [tail, 100 - tail])
    return float(low), float(high)


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


def snap(values: Any) -> np.ndarray:
    """Values rounded to 12 decimals, so that values equal within rounding error (0.1 + 0.2
    and 0.3) compare equal in ranks, P(A > B) and ties, as `is_tie` treats them."""
    return np.round(np.asarray(values, dtype=float), 12)


def sign_flip_p(a: Sequence[float], b: Sequence[float], seed: int = BOOT_SEED) -> float:
    """Exact two-sided paired sign-flip permutation p of mean(a - b) (a[i], b[i]: one seed).

    The differences are rounded to 12 decimals (so k/104 differences are exact), and a sign
    assignment counts when |its mean| >= |observed mean| - 1e-12. NaN below two pairs; 1 when
    every difference is zero. Exact (all 2^n sign assignments, enumerated) up to
    EXACT_MAX_SEEDS pairs, else RANDOM_RESAMPLES random sign vectors from a fixed generator,
    p = (1 + count) / (1 + R)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size < 2:
        return math.nan
    d = snap(x - y)
    if np.all(d == 0):
        return 1.0
    n = d.size
    observed = abs(d.mean())
    if n <= EXACT_MAX_SEEDS:
        signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1)
        count = int(np.sum(np.abs(signs @ d) / n >= observed - 1e-12))
        return min(1.0, count / 2**n)
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(RANDOM_RESAMPLES, n))
    count = int(np.sum(np.abs(signs @ d) / n >= observed - 1e-12))
    return min(1.0, (1 + count) / (1 + RANDOM_RESAMPLES))


def bootstrap_p(diffs: np.ndarray) -> float:
    """Two-sided bootstrap p of a difference from its replicates: twice the smaller share on
    either side of zero (a replicate at zero counts on both), at least 1/B."""
    r = np.asarray(diffs, dtype=float)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return math.nan
    zero = np.abs(r) <= 1e-12
    below = float(np.mean((r < 0) | zero))
    above = float(np.mean((r > 0) | zero))
    return max(1.0 / r.size, min(1.0, 2 * min(below, above)))


def prob_improvement(a: Sequence[float], b: Sequence[float], higher_is_better: bool) -> float:
    """P(A > B) of Agarwal et al. 2021: over all (a_i, b_j) pairs, 1 when a_i is better, 1/2
    when equal; the Mann-Whitney U of A over n_A n_B."""
    x, y = snap(a), snap(b)
    if x.size == 0 or y.size == 0:
        return math.nan
    if not higher_is_better:
        x, y = -x, -y
    if np.all(x == x[0]) and np.all(y == y[0]):  # scipy's p-value would divide by zero
        return 1.0 if x[0] > y[0] else 0.0 if x[0] < y[0] else 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        u = st.mannwhitneyu(x, y, alternative="two-sided", method="asymptotic").statistic
    return float(u) / (x.size * y.size)


def prob_improvement_replicates(xr: np.ndarray, yr: np.ndarray, higher: bool) -> np.ndarray:
    """P(A > B) of every replicate: xr, yr are (B, n) replicate scores of the drawn seeds."""
    xr, yr = snap(xr), snap(yr)
    if not higher:
        xr, yr = -xr, -yr
    x, y = xr[:, :, None], yr[:, None, :]
    return ((x > y) + 0.5 * (x == y)).mean(axis=(1, 2))


def seeds_needed(m: int, alpha: float = ALPHA) -> int:
    """Smallest n with 2^(1-n) m < alpha: below it an exact paired test on n seeds cannot pass
    the first step of Holm's correction over m comparisons, whatever the data."""
    n = 2
    while 2.0 ** (1 - n) * max(m, 1) >= alpha:
        n += 1
    return n


def two_stage_interval(
    per_seed: Sequence[float], test_replicates: np.ndarray, level: float = CONFIDENCE
) -> tuple[float, float]:
    """(low, high) of the mean of `per_seed` (n >= 2): mean +- t_df sqrt(s^2 / n + v_test).

    s^2: the sample variance (ddof 1) of the per-seed values; v_test: the variance of the
    mean over example-only bootstrap replicates (seeds held fixed; 0 without outcomes). The two
    variance components of a two-stage sample (Cochran 1977, "Sampling Techniques", ch. 10);
    df by Welch-Satterthwaite with v_test taken as known (it rests on thousands of examples):
    df = (s^2/n + v_test)^2 / ((s^2/n)^2 / (n - 1)), which is n - 1 when the seeds dominate
    (0.70 and 0.80: 0.75 +- 12.706 * 0.05) and tends to the normal when the test set does."""
    x = np.asarray(per_seed, dtype=float)
    n = x.size
    if n < 2:
        return math.nan, math.nan
    mean = float(x.mean())
    seed_part = float(np.var(x, ddof=1)) / n if np.ptp(snap(x)) > 0 else 0.0
    r = np.asarray(test_replicates, dtype=float)
    r = r[np.isfinite(r)]
    test_part = float(np.var(r, ddof=1)) if r.size > 1 and np.ptp(snap(r)) > 0 else 0.0
    total = seed_part + test_part
    if total <= 0:
        return mean, mean
    tail = 1 - (1 - level) / 2
    if seed_part == 0:
        q = float(st.norm.ppf(tail))
    else:
        df = total**2 / (seed_part**2 / (n - 1))
        q = float(st.t.ppf(tail, df))
    half = q * math.sqrt(total)
    return mean - half, mean + half


def metric_range(metric: str) -> tuple[float, float]:
    """Where a metric's values live: accuracy in [0, 1], bits per character in [0, inf)."""
    return {"acc": (0.0, 1.0), "bpc": (0.0, math.inf)}.get(metric, (-math.inf, math.inf))


def seed_draws(uniforms: np.ndarray, n: int) -> np.ndarray:
    """(B, n) seed positions drawn with replacement from n, from the task's shared uniforms:
    configurations with the same seeds get the same draws (a paired bootstrap)."""
    return np.minimum((uniforms[:, :n] * n).astype(np.int64), n - 1)


def nemenyi_cd(k: int, n: int, alpha: float = ALPHA) -> float:
    """Nemenyi critical difference of mean ranks for k configurations over n tasks (Demsar
    2006, sec. 3.2.2): q_alpha sqrt(k (k + 1) / (6 n)), q_alpha from the studentized range."""
    q = st.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
    return float(q * math.sqrt(k * (k + 1) / (6 * n)))


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
        interval of the example bootstrap (test set only); NaN without either."""
        if self.n == 0 or (self.n == 1 and not self.with_outcomes.all()):
            return math.nan, math.nan
        if self.n == 1:
            return percentile_interval(self.reps[:, 0])
        return two_stage_interval(self.scores, self.reps.mean(axis=1))

    def interval_kind(self) -> str:
        """What the interval includes, in words."""
        if self.n == 0:
            return "no score"
        if self.diverged.all():
            return "every seed diverged (scored at chance)"
        lacking = int((~self.with_outcomes).sum())
        if self.n == 1:
            return "test set only (1 seed)" if lacking == 0 else "none (1 seed, no outcomes)"
        if lacking == 0:
            return "seeds and test set"
        if lacking == self.n:
            return "seeds only (test-set uncertainty not included)"
        return f"seeds; test set for {self.n - lacking} of {self.n} runs"


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
        scored = _scored_runs(runs, notes)
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
    lost = out[~np.isfinite(out.score.astype(float))]
    if not lost.empty:
        notes.append(
            f"{task}: {len(lost)} diverged run(s) have no chance level to score at "
            "(no data.chance and no finite score on the task); they are left out."
        )
    return out[np.isfinite(out.score.astype(float))]


def _chance(run: Any, runs: pd.DataFrame, ok: pd.DataFrame, notes: list[str]) -> float:
    """A diverged run's score: its own data.chance, else its sweep point's, else its task's;
    else 0.0 accuracy, or the worst finite score seen on the task (said in a note)."""
    if math.isfinite(run.chance):
        return float(run.chance)
    for same in (runs[runs.sweep == run.sweep], runs):
        known = same.chance[np.isfinite(same.chance.astype(float))]
        if not known.empty:
            return float(known.median())
    finite = ok.test.astype(float)
    if run.metric == "acc":
        value, how = 0.0, "0.0"
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
    by all its runs); constant for a diverged run and for a run without outcomes."""
    values = {r.run_id: np.full(n_boot, float(r.score)) for r in scored.itertuples()}
    usable = []
    for r in scored[~scored.diverged].itertuples():
        out = outcomes.get(r.run_id)
        if out is not None and r.metric in ("acc", "bpc"):
            usable.append((r.run_id, r.metric, r.score, out))
    if not usable:
        return _Replicates(values, set())
    lengths = pd.Series([len(o["n_tokens"]) for *_, o in usable])
    n_examples = int(lengths.mode().iloc[0])
    kept, num, den = [], [], []
    for run_id, metric, score, out in usable:
        if len(out["n_tokens"]) != n_examples:
            continue
        top = out["correct"] if metric == "acc" else out["loss_nats"] / LN2
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


RESULT_COLUMNS = [
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
    (diverged ones at chance), their mean and its two-way bootstrap 95% interval."""
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
        floor, ceiling = metric_range(str(runs.metric.iloc[0]))
        low, high = max(low, floor), min(high, ceiling)  # NaN stays NaN
        times = ttt.loc[runs.run_id]
        rows.append(
            [
                *key,
                runs.metric.iloc[0],
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
    points = hist[hist.key == "throughput/tokens_per_s"]
    return points.groupby("run_id").value.median()


def config_label(row: pd.Series | tuple) -> str:
    """ "multihead + adam" (with " [model.d_k=32]" in a sweep)."""
    label = f"{row.attention} + {row.optimizer}"
    return f"{label} [{row.sweep}]" if row.sweep else label


def _label(key: tuple) -> str:
    named = dict(zip(KEY, key, strict=True))
    label = f"{named['attention']} + {named['optimizer']}"
    return f"{label} [{named['sweep']}]" if named["sweep"] else label


# --------------------------------------------------------------------------- one comparison


def compare(a: Config, b: Config) -> dict[str, Any]:
    """A vs B on the seeds both have: means, difference with its two-way bootstrap interval,
    P(A > B) with its interval, p_seed (exact sign flips), p_boot and p = max of the two."""
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
            | {"constant_equal": False, "all_equal": False, "n_nonzero": 0}
        )
    idx = seed_draws(a.uniforms, n)
    xr = np.take_along_axis(a.reps[:, ia], idx, axis=1)
    yr = np.take_along_axis(b.reps[:, ib], idx, axis=1)
    diffs = (xr - yr).mean(axis=1)  # two-way replicates: seeds and examples
    test_only = (a.reps[:, ia] - b.reps[:, ib]).mean(axis=1)  # examples only, seeds fixed
    if n == 1:
        out["diff_low"], out["diff_high"] = percentile_interval(test_only)
    else:
        out["diff_low"], out["diff_high"] = two_stage_interval(x - y, test_only)
    higher = a.higher_is_better
    out["p_improve"] = prob_improvement(x, y, higher)
    out["pi_low"], out["pi_high"] = percentile_interval(prob_improvement_replicates(xr, yr, higher))
    sx, sy = snap(x), snap(y)
    out["all_equal"] = bool(np.all(sx == sy))
    out["constant_equal"] = bool(np.all(sx == sx[0]) and np.all(sy == sx[0]))
    out["n_nonzero"] = int(np.count_nonzero(snap(x - y)))
    if n < 2:
        out |= {"p_seed": nan, "p_boot": nan, "p": nan}
        return out
    out["p_seed"] = sign_flip_p(x, y)
    out["p_boot"] = bootstrap_p(diffs)
    out["p"] = max(out["p_seed"], out["p_boot"])
    return out


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
    "better", "reason", "with_outcomes", "n_boot", "n_nonzero",
]  # fmt: skip


def comparisons(exp: Experiment, sc: Scores | None = None) -> pd.DataFrame:
    """Paired comparisons: attention kinds within an optimizer, optimizers within an attention
    kind (per task and sweep point); Holm over each task's comparisons."""
    final = exp.final
    if final.empty:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    sc = sc or scores(exp)
    present = final[KEY].drop_duplicates()
    out: list[dict[str, Any]] = []
    for task, in_task in present.groupby("task", sort=False):
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
                             **compare(ca, cb)}
                        )  # fmt: skip
        _finish_family(family)
        out.extend(family)
    return pd.DataFrame(out, columns=COMPARISON_COLUMNS)


def _key(task: str, sweep: str, axis: str, value: str, other_axis: str, other: str) -> tuple:
    named = {"task": task, "sweep": sweep, axis: value, other_axis: other}
    return tuple(named[k] for k in KEY)


# --------------------------------------------------------------------------- winners


def best_indices(configs: pd.DataFrame) -> list[Any]:
    """Indexes of every configuration with the best mean among `configs` (rows of one task;
    diverged runs already count at chance): ties are all returned."""
    pool = configs.dropna(subset=["mean"])
    if pool.empty:
        return []
    higher = bool(configs.higher_is_better.iloc[0])
    best = pool["mean"].max() if higher else pool["mean"].min()
    return [i for i, v in pool["mean"].items() if is_tie(float(v), float(best))]


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
        best = best_indices(configs)
        if not best:
            rows.append([task, None, [], math.nan, math.nan, math.nan, 0, 0, 0, "", [],
                         "no configuration has a score", 0, []])  # fmt: skip
            continue
        scored = configs[configs.n > 0]
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
            not_different.append(f"{other} ({holm_p}{why})")
    parts = []
    if better:
        every = not (worse or not_different or not_compared or ties)
        parts.append(
            "significantly better than "
            + ("every other configuration: " if every and len(better) > 1 else "")
            + _and(better)
        )
    if not_different:
        parts.append("not significantly different from " + _and(not_different))
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
        "not_different": [x.split(" (")[0] for x in not_different],
        "not_compared": not_compared,
        "worse_than": worse,
        "tied_with": ties,
    }


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
    """The Friedman test (with the Iman-Davenport F) over tasks as blocks, and the Nemenyi
    critical difference, for the configurations scored on every task; `why_not` when N < 3
    tasks or k < 3 configurations. Only when the Iman-Davenport F rejects at ALPHA are the
    critical-difference groups drawn: then ranked.within_cd marks the configurations within CD
    of the best Friedman mean rank (ranks over the configurations complete on every task)."""
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
    cd = nemenyi_cd(k, n)
    mean_ranks = dict(zip(complete, ranks.mean(axis=0), strict=True))
    top = min(mean_ranks.values())
    significant = p_f < ALPHA
    if significant:  # the Nemenyi post-hoc only after the Friedman test rejects (Demsar 2006)
        for i, c in enumerate(ranked.config):
            if c in mean_ranks:
                ranked.at[i, "within_cd"] = bool(mean_ranks[c] - top < cd)
    info.update(
        done=True,
        F_text="infinite (every task ranks them alike; p from the chi-square)"
        if math.isinf(f_stat)
        else f"{f_stat:.2f}",
        chi2=float(chi2),
        p_chi2=float(p_chi2),
        F=float(f_stat),
        p_F=max(p_f, float(np.finfo(float).tiny)),
        cd=cd,
        significant=significant,
        mean_ranks=mean_ranks,
        ranks_text=", ".join(
            f"{c} {r:.2f}" for c, r in sorted(mean_ranks.items(), key=lambda x: x[1])
        ),
        top_group=[c for c, r in sorted(mean_ranks.items(), key=lambda x: x[1]) if r - top < cd]
        if significant
        else [],
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


def performance_profile(ratios: pd.DataFrame, taus: np.ndarray) -> pd.DataFrame:
    """rho_c(tau) for every configuration (rows) at every tau (columns)."""
    if ratios.empty:
        return pd.DataFrame()
    values = ratios.to_numpy(dtype=float)
    rho = (values[:, :, None] <= taus[None, None, :]).mean(axis=1)
    return pd.DataFrame(rho, index=ratios.index, columns=taus)


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


def _fmt(value: float, digits: int = 4) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def _p_text(p: float) -> str:
    return "—" if not math.isfinite(p) else f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


METRIC_WORDS = {"acc": "accuracy", "bpc": "bits per character"}


def summary_sentences(table: pd.DataFrame, tests: pd.DataFrame, won: pd.DataFrame) -> list[str]:
    """The report's summary in plain words: per task the winner(s) with interval and n, then
    each significant corrected difference in one sentence (or why there is none)."""
    out = []
    for w in won.itertuples():
        rows = table[table.task == w.task]
        words = METRIC_WORDS.get(rows.metric.iloc[0], rows.metric.iloc[0])
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
        words = METRIC_WORDS.get(table[table.task == c.task].metric.iloc[0], "score")
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


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


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
