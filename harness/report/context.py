"""The context stage: the template's data, from the collected runs, the numbers and the figures.

Every value the HTML shows is prepared here (text, sort keys, anchors); the template only lays
it out. Strings from MLflow stay strings: the template escapes them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd
import yaml

import harness
from harness import schema
from harness.report import stats
from harness.report.collect import Experiment
from harness.report.figures import ACROSS, Drawn
from harness.report.provenance import provenance
from harness.ui import compare_url


def build_context(exp: Experiment, numbers: stats.Statistics, drawn: Drawn) -> dict[str, Any]:
    """Everything report.html.j2 needs."""
    return _context(exp, numbers, drawn) | _statistics_context(numbers)


def _context(exp: Experiment, numbers: stats.Statistics, drawn: Drawn) -> dict[str, Any]:
    table = numbers.table
    runs = exp.runs
    parent = exp.parent
    current = runs[runs.current]
    broken = current[current.outcome.isin(["failed", "killed"])]  # no result: the grid is partial
    diverged = current[current.outcome == "diverged"]  # a result: ranked last, or scored at chance
    grid_name = parent.get("tags", {}).get(schema.GRID) or ", ".join(runs.phase.unique())
    return {
        "title": f"Attention × optimizer comparison: {exp.name}",
        "experiment": {"name": exp.name, "id": exp.id},
        "grid_name": grid_name if parent else "(no grid: runs from harness train)",
        "protocol": parent.get("params", {}).get(schema.PROTOCOL, "unknown"),
        "question": _grid_description(parent.get("grid_yaml")),
        "tuning": _tuning(parent.get("grid_yaml")),
        "counts": {
            "final": int((exp.final.phase == "final").sum()),
            "tune": len(exp.tune),
            "broken": len(broken),
            "diverged_tune": int((diverged.phase == "tune").sum()),
            "diverged_final": int((diverged.phase == "final").sum()),
            "missing": len(exp.missing),
        },
        "tasks": list(dict.fromkeys(table.task)),
        "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "version": harness.__version__,
        "winners": [_winner(w, table) for w in numbers.winners.itertuples()],
        "ranking": numbers.ranking.to_dict("records"),
        "results": _results(table, exp),
        "figure_groups": _figure_groups(drawn, table),
        "gallery": [{**f.details, "path": f.path} for f in drawn.files if f.scope == "maps"],
        "gallery_notes": drawn.notes.get("maps", []),
        "comparisons": _comparisons(numbers.tests),
        "alpha": stats.ALPHA,
        "failed": _failed(exp),
        "diverged": [
            {
                "run_name": r.run_name,
                "phase": r.phase,
                # a float column (NaN where a run did not diverge): shown as an integer step
                "step": None if pd.isna(r.diverged_at) else int(r.diverged_at),
                "url": exp.run_url(r.run_id),
            }
            for r in runs[runs.current & (runs.outcome == "diverged")].itertuples()
        ],
        "missing": exp.missing.assign(lr=exp.missing.lr.map(_lr)).to_dict("records"),
        "plan_known": exp.plan_known,
        "grid_yaml": parent.get("grid_yaml"),
        "environment": _environment(exp),
        "provenance": provenance(runs),  # code, data and software behind the numbers
        "ui_hint": _ui_hint(exp.ui_url),
        "runs": [
            {
                "task": r.task,
                "config": stats.config_label(r),
                "seed": r.seed,
                "lr": _lr(r.lr),
                "outcome": r.outcome,
                "test": r.test,
                "run_id": r.run_id,
                "url": exp.run_url(r.run_id),
            }
            for r in exp.final.itertuples()
        ],
    }


def _grid_description(grid_yaml: str | None) -> str:
    """The grid's `description:` (what it asks), from the parent's grid.yaml; "" if none."""
    try:
        spec = yaml.safe_load(grid_yaml or "")
    except yaml.YAMLError:
        return ""
    text = spec.get("description") if isinstance(spec, dict) else None
    return " ".join(text.split()) if isinstance(text, str) else ""


def _tuning(grid_yaml: str | None) -> str:
    """How the grid's tune phase spent its steps, from the parent's grid.yaml; "" if unknown
    (grids launched before successive halving existed tuned exhaustively)."""
    try:
        spec = yaml.safe_load(grid_yaml or "")
    except yaml.YAMLError:
        return ""
    if not isinstance(spec, dict) or spec.get("protocol") == "fixed":
        return ""
    tuning = spec.get("tuning") or {"scheduler": "exhaustive"}
    if tuning.get("scheduler") != "halving":
        return "exhaustive (every rate at the full budget)"
    eta, rungs = tuning.get("eta"), tuning.get("rungs")
    return f"successive halving (eta {eta}, {rungs} rungs: the best 1/{eta} of the rates go on)"


def _lr(value: float | None) -> str:
    return "—" if value is None or pd.isna(value) else f"{value:g}"


def _sort(value: float) -> str:
    """A data-sort value: inf and NaN sort after every number."""
    return repr(float(value)) if np.isfinite(value) else "inf"


def _metric_text(row: Any) -> str:
    better = "higher" if row.higher_is_better else "lower"
    return f"test {row.metric_label}, {better} is better"


def _winner(w: Any, table: pd.DataFrame) -> dict[str, Any]:
    first = table[table.task == w.task].iloc[0]
    return {**w._asdict(), "metric_text": _metric_text(first)}


def _results(table: pd.DataFrame, exp: Experiment) -> list[dict[str, Any]]:
    tasks = []
    for task, rows in table.groupby("task", sort=False):
        first = rows.iloc[0]
        best = set(stats.best_indices(rows))
        comparator = ">=" if first.higher_is_better else "<="
        tasks.append(
            {
                "name": task,
                "anchor": _anchor(task),
                "metric_text": _metric_text(first),
                "target_text": f"{first.metric} {comparator} {first.target:g}",
                "has_sweep": bool((rows.sweep != "").any()),
                "runs_differ": bool((rows.runs != rows.n).any()),
                "facts": _task_facts(rows),
                "rows": [
                    {
                        **r._asdict(),
                        "best": i in best,
                        # MLflow's comparison of the row's runs (its n seeds)
                        "compare_url": compare_url(exp.ui_url, exp.id, r.run_ids)
                        if len(r.run_ids)
                        else None,
                        "mean_sort": _sort(r.mean),
                        "std_sort": _sort(r.std),
                        "ci_low_sort": _sort(r.ci_low),
                        "ci_high_sort": _sort(r.ci_high),
                        "n_params_text": _count(r.n_params),
                        "n_params_sort": _sort(r.n_params),
                        "ttt_steps_sort": _sort(r.ttt_steps),
                        "ttt_seconds_sort": _sort(r.ttt_seconds),
                        "tokens_sort": _sort(r.tokens_per_s),
                    }
                    for i, r in zip(rows.index, rows.itertuples(), strict=True)
                ],
            }
        )
    return tasks


def _count(value: float) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{int(value):,}"


def _span(values: pd.Series, fmt: Any) -> str:
    """One value, or "a – b" when configurations of the task differ; "not recorded" if none."""
    v = values.astype(float)
    v = v[np.isfinite(v)]
    if v.empty:
        return "not recorded"
    low, high = float(v.min()), float(v.max())
    return fmt(low) if low == high else f"{fmt(low)} – {fmt(high)}"


def _task_facts(rows: pd.DataFrame) -> str:
    """ "train 512, validation 104, test 104 examples; chance level 0.2500 (accuracy)"."""
    splits = ", ".join(
        f"{name} {_span(rows[column], _count)}"
        for name, column in (("train", "n_train"), ("validation", "n_val"), ("test", "n_test"))
    )
    chance = _span(rows.chance, lambda v: f"{v:.4f}")
    return f"examples: {splits}; chance level: {chance} ({rows.metric.iloc[0]})"


def _figure_groups(drawn: Drawn, table: pd.DataFrame) -> list[dict[str, Any]]:
    """Section 3: per task its figures and notes, then the figures across tasks."""
    groups = [
        {"title": task, "anchor": _anchor(task), "notes": drawn.notes.get(task, []),
         "figures": [f for f in drawn.files if f.task == task and f.scope != "maps"]}
        for task in dict.fromkeys(table.task)
    ]  # fmt: skip
    across = [f for f in drawn.files if f.scope == "across"]
    notes = drawn.notes.get(None, [])
    groups.append({"title": ACROSS, "anchor": "across", "figures": across, "notes": notes})
    return groups


def _comparisons(tests: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for task, rows in tests.groupby("task", sort=False):
        records = [
            {**r, **{f"{k}_sort": _sort(r[k]) for k in ("p_seed", "p_boot", "p", "p_holm")}}
            for r in rows.to_dict("records")
        ]
        out.append({"name": task, "anchor": _anchor(task), "rows": records,
                    "m": int(rows.p.notna().sum())})  # fmt: skip
    return out


def _statistics_context(numbers: stats.Statistics) -> dict[str, Any]:
    """What the template needs about the statistics beyond the tables."""
    table, tests = numbers.table, numbers.tests
    lacking = table[table.interval.str.startswith(("seeds only", "seeds;", "none"))]
    return {
        "summary_sentences": stats.summary_sentences(table, tests, numbers.winners),
        "param_warnings": stats.parameter_warnings(table),
        "stat_notes": numbers.scored.notes,
        "no_outcomes": [stats.config_label(r) + f" ({r.task})" for r in lacking.itertuples()],
        "friedman": numbers.friedman,
        "few_seeds": stats.FEW_SEEDS,
        "few_seeds_caveat": stats.few_seeds_caveat(table),
        "few_seeds_pairs": int(tests.n.between(1, stats.FEW_SEEDS - 1).sum()) if len(tests) else 0,
        "degenerate_pairs": int(((tests.n > 0) & (tests.pi_low == tests.pi_high)).sum())
        if len(tests)
        else 0,
        "unreached_targets": stats.unreached_targets(table),
        "friedman_max_tasks": stats.FRIEDMAN_MAX_PERMUTATION_TASKS,
        "n_boot": stats.N_BOOT,
        "boot_p_name": stats.BOOT_P_NAME,
        "exact_max": stats.EXACT_MAX_SEEDS,
    }


def _failed(exp: Experiment) -> list[dict[str, Any]]:
    runs = exp.runs
    done_cells = set(runs[runs.status == "FINISHED"].cell_id)
    bad = runs[runs.status.isin(["FAILED", "KILLED", "RUNNING"])]
    return [
        {"run_name": r.run_name, "phase": r.phase, "status": r.status, "error": r.error,
         "superseded": r.cell_id in done_cells, "url": exp.run_url(r.run_id)}
        for r in bad.itertuples()
    ]  # fmt: skip


def _environment(exp: Experiment) -> list[tuple[str, str]]:
    """Software, hardware and source, as the launcher recorded them."""
    env = exp.environment
    prefix = schema.ENV_PREFIX
    rows = [(k.removeprefix(prefix), v) for k, v in sorted(env.items()) if k.startswith(prefix)]
    if not rows:
        rows.append(("software and hardware", "not recorded by the launcher of these runs"))
    accelerators = sorted(set(exp.runs.accelerator) - {""})
    rows.append(("accelerator of the runs", ", ".join(accelerators) or "not recorded"))
    rows.append(("harness version", env.get(schema.VERSION, "not recorded")))
    rows.append(("git commit", env.get(schema.GIT_COMMIT, "not recorded")))
    return rows


def _ui_hint(ui_url: str) -> str:
    return f"{ui_url}; start it with `harness ui` when the store is a local file"


def _anchor(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower())
