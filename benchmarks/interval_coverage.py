"""Coverage of the report's interval of a mean, simulated in the crossed seeds x examples design.

Every seed is scored on the same N test examples, so the report's interval, mean +- t_df
sqrt(s^2/n + v_test) (`stats.two_stage_interval`), counts the seed-by-example interaction
twice: in s^2/n and in v_test (Owen 2007, "The pigeonhole bootstrap"). An unbiased variance
subtracts the interaction once, estimated as (mean per-seed test variance - v_test) / (n - 1),
truncated at 0 (the per-seed test variance estimates (sigma_x^2 + sigma_sx^2)/N, v_test
estimates sigma_x^2/N + sigma_sx^2/(n N)). This script measures both intervals' coverage of
the population mean (over seeds and test examples) and their mean width.

Each replication draws n seeds and N examples of a logit model, p = sigmoid(theta + a_seed +
b_example + c_seed,example) with normal effects, and 0/1 outcomes; the true mean is
E[sigmoid(theta + Z sd)] by Gauss-Hermite quadrature. A last scenario lets a seed stall (one in
five answers at chance), as seeds of the medium grid did: no interval from a few seeds can
cover a failure that the seeds drawn did not show. The test-set replicates are the
report's own: `example_weights` (B = N_BOOT draws of the examples, shared by the seeds),
each seed's metric recomputed on every draw; intervals are clipped to [0, 1] as the report
clips them. Fixed generator seeds: the figures are reproducible.

    .venv/bin/python benchmarks/interval_coverage.py                  # 2000 replications
    .venv/bin/python benchmarks/interval_coverage.py --replications 500 --seeds 3 5
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as st
from scipy.special import expit

from harness.report.stats import CONFIDENCE, N_BOOT, example_weights, two_stage_interval


@dataclass(frozen=True)
class Scenario:
    name: str
    n_examples: int
    theta: float  # logit of a typical example's accuracy
    seed_sd: float  # seed effect (logit)
    example_sd: float  # example difficulty (logit)
    interaction_sd: float  # seed-by-example effect (logit), on top of the 0/1 draw
    stall: float = 0.0  # probability that a seed stalls: it then answers right at STALLED


STALLED = 0.1  # a stalled seed's chance of a right answer on every example (chance level)
SCENARIOS = (
    Scenario("seeds dominate", 104, 1.0, 0.5, 1.5, 0.0),
    Scenario("large interaction", 104, 1.0, 0.0, 1.5, 1.5),
    Scenario("test set dominates", 1000, 1.0, 0.05, 2.0, 0.5),
    Scenario("1 seed in 5 stalls", 200, 2.0, 0.2, 1.5, 1.0, stall=0.2),
)


def true_mean(s: Scenario) -> float:
    sd = math.sqrt(s.seed_sd**2 + s.example_sd**2 + s.interaction_sd**2)
    x, w = np.polynomial.hermite_e.hermegauss(200)
    trained = float((w * expit(s.theta + sd * x)).sum() / w.sum())
    return (1 - s.stall) * trained + s.stall * STALLED


def interaction_corrected_interval(
    per_seed: np.ndarray, reps: np.ndarray, level: float = CONFIDENCE
) -> tuple[float, float]:
    """The alternative: s^2/n + v_test - max(0, (mean_s v_s - v_test) / (n - 1)), with v_s the
    example-bootstrap variance of seed s's score, t on Welch-Satterthwaite df (v's known)."""
    n = per_seed.size
    seed_part = float(np.var(per_seed, ddof=1)) / n
    v_test = float(np.var(reps.mean(axis=1), ddof=1))
    v_seed = float(np.var(reps, axis=0, ddof=1).mean())
    total = seed_part + v_test - max(0.0, (v_seed - v_test) / (n - 1))
    if total <= 0:
        return math.nan, math.nan
    tail = 1 - (1 - level) / 2
    df = total**2 / (seed_part**2 / (n - 1)) if seed_part > 0 else math.inf
    half = float(st.t.ppf(tail, df)) * math.sqrt(total)
    mean = float(per_seed.mean())
    return mean - half, mean + half


def coverage(s: Scenario, n: int, replications: int, seed: int = 0) -> dict[str, tuple]:
    """{"report": (coverage, mean width), "corrected": (...)} over `replications` draws."""
    rng = np.random.default_rng([seed, n, s.n_examples])
    mu = true_mean(s)
    hits = {"report": 0, "corrected": 0}
    widths = {"report": 0.0, "corrected": 0.0}
    for _ in range(replications):
        logit = (s.theta + rng.normal(0, s.seed_sd, (n, 1))
                 + rng.normal(0, s.example_sd, (1, s.n_examples))
                 + rng.normal(0, s.interaction_sd, (n, s.n_examples)))  # fmt: skip
        p = expit(logit)
        if s.stall:
            p = np.where(rng.random((n, 1)) < s.stall, STALLED, p)
        outcomes = (rng.random(logit.shape) < p).astype(float)
        per_seed = outcomes.mean(axis=1)
        reps = example_weights(rng, s.n_examples, N_BOOT) @ outcomes.T / s.n_examples
        for name, (low, high) in (
            ("report", two_stage_interval(per_seed, reps.mean(axis=1))),
            ("corrected", interaction_corrected_interval(per_seed, reps)),
        ):
            low, high = max(low, 0.0), min(high, 1.0)  # the report clips to the metric's range
            hits[name] += bool(low <= mu <= high)
            widths[name] += high - low if math.isfinite(high - low) else 0.0
    return {k: (hits[k] / replications, widths[k] / replications) for k in hits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replications", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 5, 10])
    args = parser.parse_args()
    print(f"{args.replications} replications each, target coverage {CONFIDENCE}")
    print(f"{'scenario':20} {'n':>3} {'N':>5}  report: coverage width  corrected: coverage width")
    for s in SCENARIOS:
        for n in args.seeds:
            out = coverage(s, n, args.replications)
            (c0, w0), (c1, w1) = out["report"], out["corrected"]
            print(f"{s.name:20} {n:>3} {s.n_examples:>5}  {c0:15.4f} {w0:6.4f}  "
                  f"{c1:18.4f} {w1:6.4f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
