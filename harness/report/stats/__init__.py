"""The report's numbers: per-configuration scores and intervals, paired tests, winners, rankings.

A configuration is task x sweep point x attention x optimizer (`KEY`); its numbers come from
its final-phase runs, one per seed, scored on held-out test data (`test/<metric>`; the
metric's name, label, direction and range come from the run's tags, whatever the task). Runs
of a task share one test set (example i is the same in every run) and runs with the same
seed share the training stream, so runs PAIR BY SEED across configurations.

Scores. A run's score is its test metric. A diverged run is never dropped: it scores the
task's chance level (param `data.chance`, e.g. chance accuracy or the unigram bpc). Without that
param (older runs) it scores the worst end of the metric's range when that is finite (0 for
accuracy), else the worst finite score seen on the task, and the report says so. It never
scores better than the worst finished run of its task and sweep point: a run can finish worse
than chance (an undertrained language model above the unigram bpc), and a diverged run scored
at chance would then rank above it; it counts at that worst finished score instead, with a
note. The bound is the same whichever configuration a run belongs to, so the paired tests'
exchangeability under no difference is kept. A seed counts once per configuration: where a
configuration holds two final runs of one seed (re-tuned to another rate and launched again),
its newest run (`_one_run_per_seed`, with a note). Failed,
killed and missing cells are not scores; section 5 lists them.

Intervals of a configuration's mean, a stated parametric method built on the seed and test-set
variance components: mean +- t_df sqrt(s_seed^2 / n + v_test), where s_seed^2 is the
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
sqrt(s_d^2 / n + v_test(dbar)). Where nothing varies (s^2 = 0 and v_test = 0: seeds that
agree with every test example right, or without outcomes; two configurations equal on every
seed and example; every seed diverged) there is no interval (NaN), and the `interval` and
`diff_interval` columns say why: a zero-width interval would read as certainty, which n
seeds that agree cannot give (the rule of three: a different score could still have
probability up to about 3/n). Every configuration of a task sees the same example draws,
so differences are coherent; the generator is seeded (`BOOT_SEED`, and the task's name): a
report is reproducible.
The design is crossed, not nested: every seed is scored on the same test examples (seeds x
examples; Owen 2007, below). Var(mean) = sigma_s^2 / n + sigma_x^2 / N + sigma_sx^2 / (n N)
(seed, example and seed-by-example interaction components, N examples); s_seed^2 / n and
v_test each contain the interaction's sigma_sx^2 / (n N), so the interval counts it twice and
is conservative (somewhat too wide: a review of the medium grid measured up to about 12% on
text_cls's standard deviation), never too narrow on that account (`two_stage_interval`).
Simulated in this design (`benchmarks/interval_coverage.py`, 2000 replications per cell, 0/1
outcomes of a logit model with seed, example and interaction effects): coverage 0.942-0.980 at
3, 5 and 10 seeds. The unbiased alternative, s^2/n + v_test minus the interaction estimated
as (mean per-seed test variance - v_test) / (n - 1), truncated at 0, with Welch-Satterthwaite
df, covers 0.92 at 3 seeds (0.9215 and 0.9245, 6 standard errors below 0.95; and where seeds
dominate it is wider, its df falling), so the report keeps the conservative interval
(tests/test_stats_validity.py, slow).

The two-way ("pigeonhole") bootstrap of Owen (2007, "The pigeonhole bootstrap", Ann. Appl.
Stat. 1(2):386-411) draws seeds with replacement (by position in seed order, shared by all
configurations of a task) and, independently, the same test examples: it gives p_boot, the
interval of P(A > B), and the rank intervals and P(rank 1). Below FEW_SEEDS (5) seeds these
understate seed-to-seed variation (a bootstrap of n seeds has few distinct draws: with 3 seeds
that agree, P(A > B)'s interval is "1.00 - 1.00"), and the report says so wherever it shows
them: the comparisons' section and its marked P(A > B) intervals, the ranking section, and the
summary's line on the best mean rank. At any n, a percentile interval of P(A > B) or of a mean
rank whose replicates are all alike (every run of A beats every run of B) has zero width; the
report marks it as describing these runs, not as a certainty.

Comparisons A vs B (same task and sweep point: attention kinds within an optimizer, optimizers
within an attention kind), on the seeds both have:
- effect sizes: diff = mean_A - mean_B with its interval (above); the probability of
  improvement P(A > B) of Agarwal et al. (2021, "Deep reinforcement learning at the edge of the
  statistical precipice", NeurIPS; the `rliable` library): the share of (A run, B run) pairs in
  which A is better, ties counting half, i.e. the Mann-Whitney U over n_A n_B
  (scipy.stats.mannwhitneyu), with its interval from the two-way bootstrap replicates. Both
  intervals are per comparison (95%, not adjusted for the task's m comparisons, unlike the
  Holm-adjusted p beside them), and the report says so.
- p_seed: the exact two-sided paired sign-flip permutation test of the mean difference: all
  2^n sign assignments enumerated up to `EXACT_MAX_SEEDS` seeds, `RANDOM_RESAMPLES` random
  ones beyond (p = (1 + count) / (1 + R)), on differences rounded to 12 decimals. Valid at any
  n; its smallest value is 2^(1-n') with n' the NONZERO differences (0.5 with 2, 0.03125 with
  6; a zero difference cannot change sign). No test below 2 seeds; all differences zero gives
  p = 1. No p-value here is ever 0.
- p_boot, the "two-way bootstrap (seeds and test set)" p: twice the smaller share of two-way
  bootstrap replicates on either side of 0, at least 1/B: does the difference survive
  resampling both the seeds and the test set? A check, not a test in its own right: below
  about 5 seeds it is anti-conservative (3 seeds whose differences share one sign, probability
  1/4 when there is no difference, put every replicate on that side and p_boot at its floor
  1/B: simulated, 24% rejections at nominal 5%), and the report labels it so.
  B is N_BOOT, or 2 m / ALPHA on a task with m comparisons when that is more, so that the
  floor 1/B never decides a Holm-corrected test.
- p = max(p_seed, p_boot): a difference is called only when it survives both (the
  intersection-union form of Berger 1982, "Multiparameter hypothesis testing and acceptance
  sampling", Technometrics 24(4)). The level rests on the exact test alone: p >= p_seed, and
  p_seed is exact at any n, so P(p <= alpha) <= alpha when there is no difference. p_boot only
  adds the test set's sampling variation, which p_seed ignores, and can only make a call more
  conservative.
- Holm's step-down correction (Holm 1979, Scand. J. Statist. 6(2)) over all comparisons of a
  task (the family is the task); significant = Holm-adjusted p < ALPHA. With m comparisons the
  first Holm step needs 2^(1-n') m < ALPHA, hence "needs at least k seeds" (n': the nonzero
  paired differences). When that holds for every comparison of a task whatever the data
  (2^(1-n) m >= ALPHA, n the paired seeds), the summary says so first, as a property of the
  design rather than a finding (`design_limits`).
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
mean rank and P(rank 1) come from the same stratified (per task) two-way bootstrap replicates
(too narrow below 5 seeds, above). With N >= 3 tasks and k >= 3 configurations present on
every task: the Friedman test (scipy.stats.friedmanchisquare) with the Iman-Davenport F
correction. Demsar gives these approximations for N > 10 and k > 5; with N <= 10 tasks the
decision rests on a Monte Carlo permutation p instead (`friedman_permutation_p`: each task's
observed ranks permuted independently, FRIEDMAN_DRAWS times from a fixed generator, p = (1 +
count) / (1 + draws)), the two approximations still shown. The Nemenyi critical difference
CD = q_alpha sqrt(k (k + 1) / (6 N)), q_alpha = studentized range(0.95; k, inf)/sqrt(2), has
its groups drawn only when that Friedman p rejects at ALPHA; else the configurations are said
to be not distinguishable. When it rejects but CD separates no configuration from the best,
the report says that with N tasks the Nemenyi test has little power and the rejection cannot
be pinned to any pair. CD applies to the Friedman ranks (over the configurations complete on
every task), shown beside it.

Fair-comparison check: configurations compared within a task and sweep point whose parameter
counts (`model.n_params`) differ by more than 10% are named (the rule of Long Range Arena, Tay
et al. 2021, "Long Range Arena: a benchmark for efficient transformers", ICLR).

Time-to-target (AlgoPerf, Dahl et al. 2023, "Benchmarking Neural Network Training Algorithms"):
the first validation step at which the metric reaches the task's target (even when the run
fell below it later), and the training seconds up to it (the sum of `time/step_ms`, evaluation
excluded). A configuration's value is the median over its seeds, a seed that never reached the
target counting as infinitely slow. Performance profiles (Dolan and More 2002): rho_c(tau) is
the fraction of tasks on which c's time-to-target is within a factor tau of the fastest
configuration on that task; the tasks where no configuration has one are named
(`unreached_targets`): the profile rests on the others.

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
    FEW_SEEDS,
    FRIEDMAN_DRAWS,
    FRIEDMAN_MAX_PERMUTATION_TASKS,
    KEY,
    N_BOOT,
    PARAMS_TOLERANCE,
    RANDOM_RESAMPLES,
    TIE_RTOL,
    bootstrap_p,
    friedman_permutation_p,
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
    unreached_targets,
)
from harness.report.stats.scores import (
    Config,
    Scores,
    example_weights,
    family_size,
    replicates_for,
    scores,
)
from harness.report.stats.summary import (
    design_limits,
    few_seeds_caveat,
    parameter_warnings,
    representative_runs,
    summary_sentences,
    untestable_tasks,
)
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
        """The Nemenyi critical difference, drawn only when the Friedman test rejects (its
        permutation p with 10 tasks or fewer)."""
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
    "FEW_SEEDS", "FRIEDMAN_DRAWS", "FRIEDMAN_MAX_PERMUTATION_TASKS", "KEY", "N_BOOT",
    "PARAMS_TOLERANCE", "RANDOM_RESAMPLES", "RANKING_COLUMNS", "RESULT_COLUMNS",
    "TIE_RTOL", "WINNER_COLUMNS", "Config", "Scores", "Statistics", "_ranks", "analyse",
    "best_indices", "bootstrap_p", "compare", "comparisons", "config_label", "design_limits",
    "example_weights", "family_size", "few_seeds_caveat", "friedman", "friedman_permutation_p",
    "holm", "is_tie", "nemenyi_cd", "parameter_warnings",
    "percentile_interval", "performance_profile", "prob_improvement",
    "prob_improvement_replicates", "profile_ratios", "ranking", "replicates_for",
    "representative_runs", "results_table", "scores", "seed_draws", "seeds_needed",
    "sign_flip_p", "snap", "summary_sentences", "time_to_target", "training_seconds",
    "two_stage_interval", "unreached_targets", "untestable_tasks", "winners",
]  # fmt: skip
