"""The report's numbers: per-configuration scores and intervals, paired tests, winners, rankings.

A configuration is task x sweep point x attention x optimizer (`KEY`); its numbers come from
its final-phase runs, one per seed, scored on held-out test data (`test/<metric>`; the
metric's name, label, direction and range come from the run's tags, whatever the task). Runs
of a task share one test set (example i is the same in every run) and runs with the same
seed share the training stream, so runs PAIR BY SEED across configurations.

Scores. A run's score is its test metric. A diverged run is never dropped: it scores the
task's chance level (param `data.chance`, e.g. chance accuracy or the unigram bpc). Without that
param (older runs) it scores the worst end of the metric's range when that is finite (0 for
accuracy), else the worst finite score seen on the task, and the report says so. Failed,
killed and missing cells are not scores; section 5 lists them.

Intervals of a configuration's mean, a stated parametric method built on the two variance
components of a two-stage sample (seeds, then test examples; Cochran 1977, "Sampling
Techniques", 3rd ed., ch. 10): mean +- t_df sqrt(s_seed^2 / n + v_test), where s_seed^2 is the
sample variance (ddof 1) of the per-seed scores and v_test the variance of the configuration
mean over example-only bootstrap replicates (`N_BOOT` draws of the test examples with
replacement, seeds held fixed; each run's metric recomputed on the drawn examples from its
`test_outcomes.json` as sum(metric_sum) / sum(n_tokens) over the draw; a diverged seed keeps
its constant chance score). df is Welch-
Satterthwaite's with v_test taken as known (it rests on the whole test set): n - 1 when the
seeds dominate, large when the test set does. The seed bootstrap this replaces under-covered
at 2 to 4 seeds (62%, 81%, 84% when seed variance dominates). One seed: the percentile
interval of the example bootstrap ("test set only (1 seed)"). Runs without per-example
outcomes (or outcomes without `metric_sum`, an older format): v_test = 0 ("seeds only"). The
mean's interval is clipped to the metric's range (tag `harness.metric_bounds`, e.g. [0, 1] for
accuracy; unbounded when a run does not record it). Paired differences alike: dbar +- t_df
sqrt(s_d^2 / n + v_test(dbar)). Every configuration of a task sees the same example draws,
so differences are coherent; the generator is seeded (`BOOT_SEED`, and the task's name): a
report is reproducible.

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

The modules, in the order the numbers are made: `primitives` (constants, intervals, tests, the
probability of improvement), `scores` (scored runs and bootstrap replicates), `table` (the
results table, time-to-target), `comparisons`, `winners`, `ranking` (across tasks, Friedman,
performance profiles), `summary` (the numbers in words). `analyse` is the report's stats stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from harness.report.collect import Experiment
from harness.report.stats.comparisons import COMPARISON_COLUMNS, compare, comparisons
from harness.report.stats.primitives import (
    ALPHA,
    BOOT_P_NAME,
    BOOT_SEED,
    CONFIDENCE,
    EXACT_MAX_SEEDS,
    KEY,
    N_BOOT,
    PARAMS_TOLERANCE,
    RANDOM_RESAMPLES,
    TIE_RTOL,
    bootstrap_p,
    holm,
    is_tie,
    nemenyi_cd,
    percentile_interval,
    prob_improvement,
    prob_improvement_replicates,
    seed_draws,
    seeds_needed,
    sign_flip_p,
    snap,
    two_stage_interval,
)
from harness.report.stats.ranking import (
    RANKING_COLUMNS,
    _ranks,
    friedman,
    performance_profile,
    profile_ratios,
    ranking,
)
from harness.report.stats.scores import (
    Config,
    Scores,
    example_weights,
    family_size,
    replicates_for,
    scores,
)
from harness.report.stats.summary import parameter_warnings, representative_runs, summary_sentences
from harness.report.stats.table import (
    RESULT_COLUMNS,
    config_label,
    results_table,
    time_to_target,
    training_seconds,
)
from harness.report.stats.winners import WINNER_COLUMNS, best_indices, winners

PROFILE_POINTS = 200  # taus of the performance profile, log-spaced from 1


@dataclass
class Statistics:
    """Every number the report shows, made once from the collected runs."""

    scored: Scores
    table: pd.DataFrame  # results_table
    tests: pd.DataFrame  # comparisons
    winners: pd.DataFrame
    ranking: pd.DataFrame
    friedman: dict[str, Any]
    profile: pd.DataFrame  # performance_profile: configuration x tau

    @property
    def cd(self) -> float | None:
        """The Nemenyi critical difference, drawn only when the Friedman test rejects."""
        return self.friedman.get("cd") if self.friedman.get("significant") else None


def analyse(exp: Experiment) -> Statistics:
    """The report's stats stage: scores, table, comparisons, winners, ranks, profiles."""
    scored = scores(exp)
    table = results_table(exp, scored)
    tests = comparisons(exp, scored)
    won = winners(exp, table, scored, tests)
    ranked = ranking(table, scored)
    info = friedman(table, ranked)
    ratios = profile_ratios(table)
    values = ratios.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    top = max(2.0, float(finite.max()) * 1.25) if finite.size else 2.0
    profile = performance_profile(ratios, np.geomspace(1.0, top, PROFILE_POINTS))
    return Statistics(scored, table, tests, won, ranked, info, profile)


__all__ = [
    "ALPHA", "BOOT_P_NAME", "BOOT_SEED", "COMPARISON_COLUMNS", "CONFIDENCE", "EXACT_MAX_SEEDS",
    "KEY", "N_BOOT", "PARAMS_TOLERANCE", "RANDOM_RESAMPLES", "RANKING_COLUMNS", "RESULT_COLUMNS",
    "TIE_RTOL", "WINNER_COLUMNS", "Config", "Scores", "Statistics", "_ranks", "analyse",
    "best_indices", "bootstrap_p", "compare", "comparisons", "config_label", "example_weights",
    "family_size", "friedman", "holm", "is_tie", "nemenyi_cd", "parameter_warnings",
    "percentile_interval", "performance_profile", "prob_improvement",
    "prob_improvement_replicates", "profile_ratios", "ranking", "replicates_for",
    "representative_runs", "results_table", "scores", "seed_draws", "seeds_needed",
    "sign_flip_p", "snap", "summary_sentences", "time_to_target", "training_seconds",
    "two_stage_interval", "winners",
]  # fmt: skip
