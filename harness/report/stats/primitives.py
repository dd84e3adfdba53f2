"""The statistics' constants and small pieces: ties, percentile and two-stage intervals, Holm,
the exact sign-flip test, the bootstrap p, the probability of improvement, the Friedman
permutation p, the Nemenyi critical difference, and the few words the sentences share. Each is
a pure function of its arguments; the package docstring (`harness.report.stats`) gives the
methods and their references."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as st

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
BOOT_P_NAME = "two-way bootstrap (seeds and test set)"  # what p_boot is, in words
FEW_SEEDS = 5  # below this a seed bootstrap (p_boot, P(A > B)'s and the ranks' intervals,
# P(rank 1)) knows too few distinct draws: too narrow, too sure, and the report says so
FRIEDMAN_MAX_PERMUTATION_TASKS = 10  # up to N tasks the Friedman p is a permutation p
# (Demsar 2006 gives the chi-square approximation for N > 10 and k > 5)
FRIEDMAN_DRAWS = 20_000  # random rankings of the Friedman permutation p


# --------------------------------------------------------------------------- small pieces


def is_tie(a: float, b: float) -> bool:
    """Equal to TIE_RTOL (relative); two NaNs are not a tie."""
    return math.isclose(a, b, rel_tol=TIE_RTOL, abs_tol=1e-300)


def percentile_interval(values: np.ndarray, level: float = CONFIDENCE) -> tuple[float, float]:
    """(low, high) percentile interval of bootstrap replicates; NaN without replicates. Of
    zero width when every replicate is the same: `varied_interval` for a mean or a
    difference, where that width would read as certainty."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(v, [tail, 100 - tail])
    return float(low), float(high)


def varied_interval(values: np.ndarray, level: float = CONFIDENCE) -> tuple[float, float]:
    """The percentile interval of replicates of a mean or difference (one seed: the test set
    alone); NaN when they do not vary (snapped), as `two_stage_interval`."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0 or np.ptp(snap(v)) == 0:
        return math.nan, math.nan
    return percentile_interval(v, level)


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
    either side of zero (a replicate at zero counts on both), at least 1/B.

    Not a level-alpha test on its own at few seeds: a bootstrap of n seeds has few distinct
    draws, and with 3 seeds whose differences share one sign (probability 1/4 when there is no
    difference) every replicate has that sign and the p sits at its floor 1/B (simulated: 24%
    rejections at nominal 5%). The report uses it only inside p = max(p_seed, p_boot), where it
    can make a call more conservative and the exact p_seed keeps the level."""
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
    mean over example-only bootstrap replicates (seeds held fixed; 0 without outcomes).

    The design is crossed, not nested: every seed is scored on the same N test examples
    (seeds x examples; Owen 2007, "The pigeonhole bootstrap", Ann. Appl. Stat. 1(2)). With a
    seed effect (variance sigma_s^2), an example effect (sigma_x^2) and their interaction
    (sigma_sx^2), Var(mean) = sigma_s^2/n + sigma_x^2/N + sigma_sx^2/(n N). Here s^2/n
    estimates sigma_s^2/n + sigma_sx^2/(n N) and v_test estimates sigma_x^2/N +
    sigma_sx^2/(n N): the interaction is counted twice, so the interval is conservative
    (somewhat too wide, most when the seed-by-example interaction is large; a review of the
    medium grid measured up to about 12% on text_cls's standard deviation), never too narrow
    on that account. Subtracting the interaction once would make it unbiased, but then it
    under-covers at 3 seeds (0.92 simulated; `benchmarks/interval_coverage.py`).
    df by Welch-Satterthwaite with v_test taken as known (it rests on thousands of examples):
    df = (s^2/n + v_test)^2 / ((s^2/n)^2 / (n - 1)), which is n - 1 when the seeds dominate
    (0.70 and 0.80: 0.75 +- 12.706 * 0.05) and tends to the normal when the test set does.

    NaN when nothing varies (s^2 = 0 and v_test = 0: seeds that agree, on a test set whose
    resampling changes nothing, or without outcomes): a zero-width interval would claim a
    certainty that n seeds cannot give (n seeds that agree still allow a different score
    with probability up to about 3/n, the rule of three)."""
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
        return math.nan, math.nan
    tail = 1 - (1 - level) / 2
    if seed_part == 0:
        q = float(st.norm.ppf(tail))
    else:
        df = total**2 / (seed_part**2 / (n - 1))
        q = float(st.t.ppf(tail, df))
    half = q * math.sqrt(total)
    return mean - half, mean + half


def seed_draws(uniforms: np.ndarray, n: int) -> np.ndarray:
    """(B, n) seed positions drawn with replacement from n, from the task's shared uniforms:
    configurations with the same seeds get the same draws (a paired bootstrap)."""
    return np.minimum((uniforms[:, :n] * n).astype(np.int64), n - 1)


def friedman_permutation_p(
    ranks: np.ndarray, draws: int = FRIEDMAN_DRAWS, seed: int = BOOT_SEED
) -> float:
    """Monte Carlo permutation p of the Friedman statistic; `ranks` is tasks x configurations.

    Under H0 each task's ranking is a uniformly random permutation of its configurations'
    ranks, so each task's observed rank vector (ties keep their average ranks) is permuted
    independently, `draws` times from a fixed generator; p = (1 + #{stat >= observed}) /
    (1 + draws), valid at any number of tasks (the chi-square and F approximations are not at
    few). The statistic is the sum of squared column rank sums: with each task's ranks fixed
    up to order, the Friedman chi-square (tie-corrected or not) and the Iman-Davenport F are
    increasing functions of it, so the p is theirs. As scipy.stats.permutation_test with
    permutation_type="samples" would give, vectorised (a quarter second at 10 x 30)."""
    r = np.asarray(ranks, dtype=float)
    n, k = r.shape
    observed = float(np.sum(r.sum(axis=0) ** 2))
    rng = np.random.default_rng(seed)
    count = 0
    for start in range(0, draws, CHUNK * 20):
        size = min(CHUNK * 20, draws - start)
        drawn = rng.permuted(np.broadcast_to(r, (size, n, k)), axis=2)
        stat = np.sum(drawn.sum(axis=1) ** 2, axis=1)
        count += int(np.sum(stat >= observed * (1 - 1e-12)))
    return (1 + count) / (1 + draws)


def nemenyi_cd(k: int, n: int, alpha: float = ALPHA) -> float:
    """Nemenyi critical difference of mean ranks for k configurations over n tasks (Demsar
    2006, sec. 3.2.2): q_alpha sqrt(k (k + 1) / (6 n)), q_alpha from the studentized range."""
    q = st.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
    return float(q * math.sqrt(k * (k + 1) / (6 * n)))


# --------------------------------------------------------------------------- words


def _fmt(value: float, digits: int = 4) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}g}"


def _p_text(p: float) -> str:
    return "—" if not math.isfinite(p) else f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
