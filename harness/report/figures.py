"""The report's figures as one list (`FIGURES`), and the figures stage that draws them.

Each entry names a figure, says when it applies (its scope: once per task, per task and swept
parameter, once across tasks, or per representative run for the attention-map gallery), how
to draw it, its title and caption, and the note the report shows when it applies but cannot be
drawn (no tuning runs, no target reached, a kind that records no attention maps). The figure
sections, the progress count and the missing-figure notes all come from this list: adding a
figure is one entry here and its draw function.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from mlflow import MlflowClient

from harness import schema
from harness.report.collect import Experiment
from harness.report.fetch import download_artifact
from harness.report.plots import (
    diagnostics_plot,
    heatmap,
    learning_curves,
    lr_sensitivity,
    point_plot,
    sweep_plot,
)
from harness.report.plots_across import profile_plot, ranking_plot, throughput_plot
from harness.report.stats import (
    Statistics,
    config_label,
    representative_runs,
    unreached_targets,
)
from harness.report.style import DPI, Style, metric_label, n_caption

INTERVAL = ("95% interval from the seed and test-set variance, mean ± t·√(s²/n + v_test) "
            "(the results table's numbers); diverged runs count at chance. A hollow point has "
            "no interval: nothing varied (the results table says why).")  # fmt: skip
ACROSS = "Across tasks"


@dataclass
class Inputs:
    """What the draw functions read: the runs, the numbers, the style, and (for the gallery)
    the store and a scratch folder to download into."""

    exp: Experiment
    numbers: Statistics
    style: Style
    client: MlflowClient | None = None
    scratch: Path | None = None


Draw = Callable[[Inputs, "Job"], Figure | str | None]  # a Figure, a downloaded file, or None


@dataclass(frozen=True)
class Entry:
    name: str  # file stem (and HTML anchor); {task}, {key} and {attention} are filled in
    scope: str  # "task" | "sweep" (per task and swept key) | "across" | "maps" (per run)
    title: str  # format fields: {task}, {metric}, {key}, {config}
    caption: str  # format fields: {n}, {interval}, {tasks}, {unreached}
    draw: Draw
    missing: str  # the note when the figure applies but cannot be drawn


@dataclass(frozen=True)
class Job:
    """One entry for one task (and swept key, or representative run)."""

    entry: Entry
    task: str | None = None
    key: str | None = None
    run: Any = None  # a representative run (scope "maps")

    def fields(self, inputs: Inputs) -> dict[str, Any]:
        table = inputs.numbers.table
        rows = table[table.task == self.task] if self.task is not None else table
        run = self.run
        return {
            "task": self.task, "key": self.key, "interval": INTERVAL,
            "metric": metric_label(rows) if not rows.empty else "test metric",
            "n": n_caption(table, self.task), "tasks": table.task.nunique(),
            "unreached": unreached_targets(table) if self.entry.scope == "across" else "",
            "attention": getattr(run, "attention", ""), "config": getattr(run, "config", ""),
            "run_name": getattr(run, "run_name", ""),
        }  # fmt: skip


@dataclass(frozen=True)
class FigureFile:
    name: str  # file stem, also the HTML anchor
    title: str
    caption: str
    path: Path
    task: str | None = None
    scope: str = "task"
    details: dict[str, Any] = field(default_factory=dict)  # gallery: the run shown


def _attention_maps(inputs: Inputs, job: Job) -> str | None:
    """The representative run's attention-map artifact, downloaded (None: it has none)."""
    if inputs.client is None or inputs.scratch is None:
        return None
    return download_artifact(inputs.client, job.run.run_id, schema.ATTENTION_MAPS,
                             str(inputs.scratch))  # fmt: skip


def _configs(inputs: Inputs) -> pd.DataFrame:
    table = inputs.numbers.table
    return table.assign(config=[config_label(r) for r in table.itertuples()])


FIGURES: list[Entry] = [
    Entry("heatmap-{task}", "task", "{task}: mean {metric}",
          "Mean over final seeds (diverged ones at chance); rows are attention kinds, columns "
          "optimizers. {n}",
          lambda i, j: heatmap(i.numbers.table, j.task, i.style),
          "No heatmap: no configuration of this task has a score."),
    Entry("ci-{task}", "task", "{task}: {metric} with 95% intervals",
          "Mean over final seeds with its {interval} {n}",
          lambda i, j: point_plot(i.numbers.table, j.task, i.style),
          "No interval plot: no configuration of this task has a score."),
    Entry("curves-{task}", "task", "{task}: learning curves",
          "Validation metric during training: mean over final seeds, band = +-1 standard "
          "deviation; dashed line = the task's target; a diverged run's curve stops. {n}",
          lambda i, j: learning_curves(i.exp, j.task, i.style),
          "No learning curves: the final runs of this task logged no validation metric."),
    Entry("lr-{task}", "task", "{task}: learning-rate sensitivity (tune phase)",
          "Final validation metric of each tuning run against its learning rate (mean over "
          "tune seeds); a rate that diverged leaves a gap. Under successive halving each "
          "rate shows its longest run; a hollow marker is a rate dropped after fewer steps "
          "than the rates kept, so its value is not comparable with theirs.",
          lambda i, j: lr_sensitivity(i.exp, j.task, i.style),
          "No learning-rate sensitivity curve: this grid has no finished tuning runs for this "
          "task."),
    Entry("sweep-{task}-{key}", "sweep", "{task}: {metric} against {key}",
          "Mean over final seeds with its {interval} {n}",
          lambda i, j: sweep_plot(i.numbers.table, j.task, j.key, i.style),
          "No plot against {key}: no configuration at its sweep points has a score."),
    Entry("diagnostics-{task}", "task", "{task}: attention logits and entropy",
          "Standard deviation of the attention logits as they enter the softmax, and mean "
          "attention entropy, on a fixed validation batch, per layer, averaged over heads; at "
          "step 0 (before the first update) and at the last validation; mean over seeds and "
          "optimizers per attention kind. Vaswani et al. (2017, sec. 3.2.1) predict that "
          "unscaled dot-product logits grow as sqrt(d_k). {n}",
          lambda i, j: diagnostics_plot(i.exp, j.task, i.style),
          "No attention diagnostics: no final run of this task logged them."),
    Entry("ranking", "across", "Mean rank across tasks",
          "Mean rank over {tasks} task(s) with its 95% stratified bootstrap interval (seeds and "
          "test examples resampled per task; too narrow below 5 seeds); red bar: the Nemenyi "
          "critical difference, drawn only when the Friedman test rejects (section 4).",
          lambda i, j: ranking_plot(i.numbers.ranking, i.numbers.cd),
          "No ranking figure: there are fewer than two configurations to rank."),
    Entry("profiles", "across", "Performance profiles",
          "Fraction of tasks on which a configuration reached the target within a factor tau "
          "of the fastest configuration (training seconds to target, median over seeds; the "
          "first evaluation at which a run reached the target, even if it fell below it "
          "later). {unreached}",
          lambda i, j: profile_plot(i.numbers.profile, _configs(i), i.style),
          "No performance profile: no configuration reached its task's target."),
    Entry("throughput", "across", "Training throughput per attention kind",
          "Median tokens per second over each configuration's final runs; bars span the "
          "optimizers' medians (min to max).",
          lambda i, j: throughput_plot(i.numbers.table, i.style),
          "No throughput figure: no final run logged its throughput."),
    Entry("attention-{task}-{attention}", "maps", "{task} · {config}", "",
          _attention_maps,
          "No attention maps for {task} · {attention}: its representative run {run_name} "
          "holds none (a kind that cannot return attention weights records none)."),
]  # fmt: skip


def jobs(inputs: Inputs, entries: list[Entry] | None = None) -> list[Job]:
    """Every figure the report tries, in the report's order: per task its entries (swept keys
    in name order), then the entries across tasks, then the attention-map gallery."""
    entries = FIGURES if entries is None else entries
    table = inputs.numbers.table
    out: list[Job] = []
    for task in dict.fromkeys(table.task):
        keys = sorted({k for v in table[table.task == task].sweep_values for k in v})
        for entry in entries:
            if entry.scope == "task":
                out.append(Job(entry, task))
            elif entry.scope == "sweep":
                out += [Job(entry, task, key) for key in keys]
    out += [Job(e) for e in entries if e.scope == "across"]
    maps = [e for e in entries if e.scope == "maps"]
    if maps:
        reps = representative_runs(inputs.exp, table)
        out += [Job(e, rep.task, run=rep) for e in maps for rep in reps.itertuples()]
    return out


@dataclass
class Drawn:
    """The figures stage's result: the files made and, per group, the notes for the rest."""

    files: list[FigureFile]
    notes: dict[str | None, list[str]]  # task (None: across tasks; "maps": the gallery)


def draw_figures(inputs: Inputs, folder: Path, step: Callable[[], None] | None = None) -> Drawn:
    """The figures stage: every job drawn and saved under `folder` (created), in order."""
    folder.mkdir(parents=True, exist_ok=True)
    sns.set_theme(style="whitegrid", context="paper")
    files: list[FigureFile] = []
    notes: dict[str | None, list[str]] = {}
    for job in jobs(inputs):
        entry, fields = job.entry, job.fields(inputs)
        made = entry.draw(inputs, job)
        if step:
            step()
        group = "maps" if entry.scope == "maps" else job.task
        if made is None:
            if entry.missing:
                notes.setdefault(group, []).append(entry.missing.format(**fields))
            continue
        name = safe_name(entry.name.format(**fields))
        path = folder / f"{name}.png"
        if isinstance(made, Figure):
            made.savefig(path, dpi=DPI)
        else:
            shutil.move(made, path)
        details = job.run._asdict() if job.run is not None else {}
        files.append(FigureFile(name, entry.title.format(**fields),
                                entry.caption.format(**fields), path, job.task, entry.scope,
                                details))  # fmt: skip
    return Drawn(files, notes)


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
