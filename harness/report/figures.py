"""The report's figures, drawn with seaborn on matplotlib `Figure`s and saved as PNG.

Figures are made with `Figure()` rather than pyplot, so no GUI backend or global figure state
is involved (and nothing is left open between figures).

Every attention kind has one colour in every figure (seaborn's colour-blind-safe palette,
assigned in `ATTENTION_ORDER`, unknown kinds after it), and every axis is labelled with what
it shows and its unit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from harness.report.collect import ATTENTION_ORDER, OPTIMIZER_ORDER, Experiment
from harness.report.stats import config_label

LINESTYLES = ["-", "--", ":", "-."]
DPI = 110
METRIC_LABEL = {"acc": "test accuracy", "bpc": "test bits per character"}


@dataclass(frozen=True)
class FigureFile:
    name: str  # file stem, also the HTML anchor
    title: str
    caption: str
    path: Path
    task: str | None = None


def ordered(values: pd.Series | list[str], order: list[str]) -> list[str]:
    present = list(dict.fromkeys(values))
    return [v for v in order if v in present] + sorted(v for v in present if v not in order)


def attention_palette(kinds: list[str]) -> dict[str, tuple]:
    """The same colour for the same attention kind in every figure of every report."""
    names = ordered(kinds, ATTENTION_ORDER)
    extra = [k for k in names if k not in ATTENTION_ORDER]
    colours = sns.color_palette("colorblind", len(ATTENTION_ORDER) + len(extra))
    return {k: colours[i] for i, k in enumerate(ATTENTION_ORDER + extra) if k in names}


def metric_label(metric: str, split: str = "test") -> str:
    return METRIC_LABEL.get(metric, f"test {metric}").replace("test", split, 1)


# --------------------------------------------------------------------------- the figures


def heatmap(table: pd.DataFrame, task: str) -> Figure:
    """Mean test metric, attention (rows) x optimizer (columns), a panel per sweep point."""
    rows = table[table.task == task]
    sweeps = list(dict.fromkeys(rows.sweep))
    metric = rows.metric.iloc[0]
    fig, axes = _subplots(
        1, len(sweeps), figsize=(1.2 + 3.6 * len(sweeps), 3.2), squeeze=False, layout="constrained"
    )
    cmap = "viridis" if rows.higher_is_better.iloc[0] else "viridis_r"
    vmin, vmax = np.nanmin(rows["mean"]), np.nanmax(rows["mean"])
    for ax, sweep in zip(axes[0], sweeps, strict=True):
        part = rows[rows.sweep == sweep]
        grid = part.pivot_table(index="attention", columns="optimizer", values="mean")
        grid = grid.reindex(
            index=ordered(part.attention, ATTENTION_ORDER),
            columns=ordered(part.optimizer, OPTIMIZER_ORDER),
        )
        sns.heatmap(grid, ax=ax, annot=True, fmt=".3f", cmap=cmap, vmin=vmin, vmax=vmax,
                    cbar=ax is axes[0][-1], cbar_kws={"label": metric_label(metric)},
                    linewidths=0.5)  # fmt: skip
        ax.set_xlabel("optimizer")
        ax.set_ylabel("attention")
        ax.set_title(sweep or f"{task}: mean {metric_label(metric)}", fontsize=10)
    return fig


def point_plot(table: pd.DataFrame, task: str) -> Figure:
    """Mean test metric with its 95% interval (seed plus test-set variance; the results table's),
    per optimizer and attention kind, a panel per sweep point."""
    rows = table[table.task == task]
    sweeps = list(dict.fromkeys(rows.sweep))
    kinds = ordered(rows.attention, ATTENTION_ORDER)
    palette = attention_palette(kinds)
    fig, axes = _subplots(1, len(sweeps), figsize=(1.6 + 4.2 * len(sweeps), 3.3), squeeze=False,
                             sharey=True, layout="constrained")  # fmt: skip
    width = 0.7 / max(1, len(kinds))
    for ax, sweep in zip(axes[0], sweeps, strict=True):
        part = rows[rows.sweep == sweep]
        optimizers = ordered(part.optimizer, OPTIMIZER_ORDER)
        for k, kind in enumerate(kinds):
            mine = part[part.attention == kind].set_index("optimizer").reindex(optimizers)
            x = np.arange(len(optimizers)) + (k - (len(kinds) - 1) / 2) * width
            ax.errorbar(x, mine["mean"], yerr=_yerr(mine), fmt="o", color=palette[kind],
                        label=kind, capsize=3, markersize=5, linewidth=1.2)  # fmt: skip
        ax.set_xticks(range(len(optimizers)), optimizers)
        ax.set_xlabel("optimizer")
        ax.set_ylabel(metric_label(part.metric.iloc[0]))
        _clip_to_metric(ax, part)
        ax.set_title(sweep or task, fontsize=10)
    axes[0][-1].legend(title="attention", fontsize=8, frameon=False, loc="upper left",
                       bbox_to_anchor=(1.02, 1))  # fmt: skip
    return fig


def learning_curves(exp: Experiment, task: str) -> Figure | None:
    """Validation metric against step, mean over seeds with a +-1 s.d. band, a panel per
    optimizer (and sweep point)."""
    final = exp.final[exp.final.task == task]
    hist = exp.histories
    metric = final.metric.iloc[0] if not final.empty else "acc"
    points = hist[hist.key == f"val/{metric}"].merge(
        final[["run_id", "attention", "optimizer", "sweep"]], on="run_id"
    )
    if points.empty:
        return None
    points["panel"] = _panel_names(points)
    fig, axes, panels, kinds = _panel_grid(points, sharex=True)
    target = final.target.iloc[0]
    for ax, panel in zip(axes.flat, panels, strict=False):
        part = points[points.panel == panel]
        sns.lineplot(data=part, x="step", y="value", hue="attention", hue_order=kinds,
                     palette=attention_palette(kinds), errorbar="sd", ax=ax,
                     legend=ax is axes[0, -1])  # fmt: skip
        if not math.isnan(target):
            ax.axhline(target, color="0.5", linewidth=0.8, linestyle="--")
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel(metric_label(metric, "validation"))
        _legend_outside(ax, ax is axes[0, -1], "attention")
    return fig


def lr_sensitivity(exp: Experiment, task: str) -> Figure | None:
    """Tune phase: final validation metric against learning rate (log axis), per optimizer."""
    tune = exp.tune[(exp.tune.task == task) & (exp.tune.outcome == "ok")].dropna(subset=["val"])
    if tune.empty:
        return None
    tune = tune.assign(panel=_panel_names(tune))
    fig, axes, panels, kinds = _panel_grid(tune, sharex=False)
    metric = tune.metric.iloc[0]
    for ax, panel in zip(axes.flat, panels, strict=False):
        part = tune[tune.panel == panel]
        sns.lineplot(data=part, x="lr", y="val", hue="attention", hue_order=kinds,
                     palette=attention_palette(kinds), marker="o", errorbar=None, ax=ax,
                     legend=ax is axes[0, -1])  # fmt: skip
        ax.set_xscale("log")
        rates = sorted(part.lr.unique())
        ax.set_xticks(rates, [f"{r:g}" for r in rates], rotation=45 if len(rates) > 4 else 0)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("learning rate")
        ax.set_ylabel(metric_label(metric, "validation"))
        _legend_outside(ax, ax is axes[0, -1], "attention")
    return fig


def sweep_plot(table: pd.DataFrame, task: str, key: str) -> Figure | None:
    """Mean test metric (with its 95% CI) against one swept value, per attention kind, a panel
    per optimizer."""
    swept = table.sweep_values.map(lambda point: key in point)  # pandas 3: no Series & list
    rows = table[(table.task == task) & swept]
    rows = rows.dropna(subset=["mean"])
    if rows.empty:
        return None
    rows = rows.assign(swept=[v[key] for v in rows.sweep_values])
    optimizers = ordered(rows.optimizer, OPTIMIZER_ORDER)
    kinds = ordered(rows.attention, ATTENTION_ORDER)
    palette = attention_palette(kinds)
    fig, axes = _subplots(1, len(optimizers), figsize=(1.6 + 3.4 * len(optimizers), 3.0),
                             squeeze=False, sharey=True, layout="constrained")  # fmt: skip
    numeric = all(isinstance(v, int | float) for v in rows.swept)
    for ax, optimizer in zip(axes[0], optimizers, strict=True):
        for kind in kinds:
            mine = rows[(rows.optimizer == optimizer) & (rows.attention == kind)]
            mine = mine.sort_values("swept") if numeric else mine
            x = mine.swept if numeric else mine.swept.astype(str)
            ax.errorbar(x, mine["mean"], yerr=_yerr(mine), marker="o", capsize=3,
                        color=palette[kind], label=kind, linewidth=1.3, markersize=4)  # fmt: skip
        if numeric and min(rows.swept) > 0 and max(rows.swept) / min(rows.swept) >= 8:
            ax.set_xscale("log", base=2)
            ticks = sorted(set(rows.swept))
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(optimizer, fontsize=10)
        ax.set_xlabel(key)
        ax.set_ylabel(metric_label(rows.metric.iloc[0]))
        _clip_to_metric(ax, rows)
    axes[0][-1].legend(title="attention", fontsize=8, frameon=False, loc="upper left",
                       bbox_to_anchor=(1.02, 1))  # fmt: skip
    return fig


def profile_plot(profile: pd.DataFrame, configs: pd.DataFrame) -> Figure | None:
    """Performance profiles: colour = attention kind, line style = optimizer."""
    if profile.empty or not profile.to_numpy().any():  # nobody reached a target
        return None
    configs = configs.drop_duplicates("config")
    kinds = ordered(configs.attention, ATTENTION_ORDER)
    palette = attention_palette(kinds)
    optimizers = ordered(configs.optimizer, OPTIMIZER_ORDER)
    styles = {o: LINESTYLES[i % len(LINESTYLES)] for i, o in enumerate(optimizers)}
    fig, ax = _subplots(1, 1, figsize=(7.6, 3.8))
    taus = profile.columns.to_numpy(dtype=float)
    for row in configs.itertuples():
        if row.config in profile.index:
            ax.step(
                taus,
                profile.loc[row.config].to_numpy(),
                where="post",
                label=row.config,
                color=palette[row.attention],
                linestyle=styles[row.optimizer],
                linewidth=1.4,
            )
    ax.set_xscale("log")
    ticks = [t for t in (1, 1.5, 2, 3, 5, 10, 20, 50, 100, 1000) if t <= taus[-1]]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("tau: time-to-target within this factor of the fastest configuration")
    ax.set_ylabel("fraction of tasks")
    fig.legend(fontsize=7, loc="outside right upper", frameon=False,
               ncols=1 + len(configs) // 20)  # fmt: skip
    return fig


def throughput_plot(table: pd.DataFrame) -> Figure | None:
    """Median training throughput (tokens/s) per attention kind, one panel per task."""
    data = table.dropna(subset=["tokens_per_s"])
    if data.empty:
        return None
    tasks = list(dict.fromkeys(data.task))
    kinds = ordered(data.attention, ATTENTION_ORDER)
    fig, axes = _subplots(1, len(tasks), figsize=(1.2 + 2.9 * len(tasks), 3.0), squeeze=False,
                             layout="constrained")  # fmt: skip
    for ax, task in zip(axes[0], tasks, strict=True):
        sns.barplot(data=data[data.task == task], x="attention", y="tokens_per_s", hue="attention",
                    order=kinds, hue_order=kinds, palette=attention_palette(kinds),
                    errorbar=("pi", 100), ax=ax, legend=False)  # fmt: skip
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("attention")
        ax.set_ylabel("training tokens per second")
        ax.tick_params(axis="x", labelrotation=30)
    return fig


ATTN_STATS = {"logit_std": "attention logit std", "entropy": "attention entropy (nats)"}


def diagnostics_plot(exp: Experiment, task: str) -> Figure | None:
    """Attention diagnostics (`attn/logit_std/layer<i>`, `attn/entropy/layer<i>`) at the first
    logged step (step 0, before training) and at the last validation: mean over seeds (and
    optimizers) per attention kind, against a swept model.d_k (log2 axis) when there is one,
    else against the layer. None when no run logged them."""
    final = exp.final[exp.final.task == task]
    hist = exp.histories
    points = hist[hist.key.str.startswith("attn/")]
    if points.empty or final.empty:
        return None
    points = points.merge(final[["run_id", "attention", "sweep_values"]], on="run_id")
    if points.empty:
        return None
    parts = points.key.str.extract(r"^attn/(?P<stat>[^/]+)/layer(?P<layer>\d+)$")
    points = points.assign(stat=parts.stat, layer=pd.to_numeric(parts.layer)).dropna(
        subset=["stat", "layer"]
    )
    points = points[points.stat.isin(list(ATTN_STATS))]
    if points.empty:
        return None
    first = points.groupby("run_id").step.transform("min")
    last = points.groupby("run_id").step.transform("max")
    when = pd.concat(
        [points[points.step == first].assign(when="start of training (step 0)"),
         points[(points.step == last) & (last > first)].assign(when="last validation")]
    )  # fmt: skip
    dk = [v.get("model.d_k") for v in when.sweep_values]
    swept = all(isinstance(v, int | float) and v > 0 for v in dk) and len(set(dk)) > 1
    when = when.assign(x=dk if swept else when.layer)
    data = when.groupby(["stat", "when", "attention", "layer", "x"], as_index=False).value.mean()
    moments = list(dict.fromkeys(when.when))
    kinds = ordered(data.attention, ATTENTION_ORDER)
    palette = attention_palette(kinds)
    layers = sorted(data.layer.unique())
    if swept and len(layers) > len(LINESTYLES):
        layers = [layers[0], layers[-1]]
    stats_ = [s for s in ATTN_STATS if s in set(data.stat)]
    fig, axes = _subplots(len(stats_), len(moments), figsize=(1.8 + 3.6 * len(moments),
                          2.6 * len(stats_)), squeeze=False, sharex=True)  # fmt: skip
    for row, stat in enumerate(stats_):
        for col, moment in enumerate(moments):
            ax = axes[row][col]
            part = data[(data.stat == stat) & (data.when == moment)]
            for kind in kinds:
                mine = part[part.attention == kind]
                if swept:
                    for i, layer in enumerate(layers):
                        line = mine[mine.layer == layer].sort_values("x")
                        ax.plot(line.x, line.value, marker="o", markersize=3.5,
                                color=palette[kind], linestyle=LINESTYLES[i % len(LINESTYLES)],
                                label=f"{kind}, layer {int(layer)}")  # fmt: skip
                else:
                    line = mine.sort_values("x")
                    ax.plot(line.x, line.value, marker="o", markersize=4, color=palette[kind],
                            label=kind)  # fmt: skip
            if swept:
                ticks = sorted(set(data.x))
                ax.set_xscale("log", base=2)
                ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
                ax.set_xlabel("model.d_k (total query/key width)")
            else:
                ax.set_xticks(sorted(set(data.x)), [f"{int(t)}" for t in sorted(set(data.x))])
                ax.set_xlabel("layer")
            values = part.value[part.value > 0]
            if stat == "logit_std" and not values.empty and values.max() / values.min() >= 4:
                ax.set_yscale("log")
            ax.set_ylabel(ATTN_STATS[stat])
            ax.set_title(moment, fontsize=9)
    axes[0][-1].legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1))
    return fig


def ranking_plot(ranked: pd.DataFrame, cd: float | None = None) -> Figure | None:
    """Mean rank over tasks with its 95% bootstrap interval, best at the top; the Nemenyi
    critical difference as a bar when there is one."""
    if ranked is None or len(ranked) < 2:
        return None
    rows = ranked.iloc[::-1]
    fig, ax = _subplots(1, 1, figsize=(7.2, 1.2 + 0.24 * len(rows)))
    y = np.arange(len(rows))
    err = np.vstack([rows.mean_rank - rows.rank_low, rows.rank_high - rows.mean_rank])
    ax.errorbar(rows.mean_rank, y, xerr=np.nan_to_num(np.clip(err, 0, None)), fmt="o",
                color="0.2", capsize=2.5, markersize=4, linewidth=1)  # fmt: skip
    ax.set_yticks(y, rows.config, fontsize=7)
    ax.set_xlabel("mean rank over tasks (1 = best), 95% bootstrap interval")
    if cd:
        start = float(ranked.mean_rank.min())
        ax.plot([start, start + cd], [len(rows) - 0.4] * 2, color="C3", linewidth=2.5)
        ax.text(start + cd / 2, len(rows) - 0.25, f"CD = {cd:.2f}", ha="center", fontsize=7,
                color="C3")  # fmt: skip
        ax.set_ylim(-0.7, len(rows) + 0.3)
    return fig


def n_caption(table: pd.DataFrame, task: str | None = None) -> str:
    """How many runs each configuration's numbers rest on, and how many diverged."""
    rows = table if task is None else table[table.task == task]
    if rows.empty:
        return ""
    low, high = int(rows.n.min()), int(rows.n.max())
    n = f"n = {low} run(s)" if low == high else f"n = {low} to {high} runs"
    diverged = rows[rows.diverged > 0]
    if diverged.empty:
        return f"{n} per configuration, none diverged."
    listed = ", ".join(
        f"{config_label(r)} {int(r.diverged)} of {int(r.n)}" for r in diverged.itertuples()
    )
    return f"{n} per configuration; diverged (counted at chance): {listed}."


def _yerr(rows: pd.DataFrame) -> np.ndarray:
    """Error bars from the interval (a percentile interval can leave the mean outside it:
    the bar then stops at the mean)."""
    err = np.vstack([rows["mean"] - rows.ci_low, rows.ci_high - rows["mean"]])
    return np.clip(np.nan_to_num(err), 0, None)


def _clip_to_metric(ax: Axes, rows: pd.DataFrame) -> None:
    """Accuracy lives in [0, 1]: keep the axis within it (a little margin), so an interval
    never squashes the means into a line."""
    if rows.metric.iloc[0] != "acc":
        return
    low = np.nanmin(np.concatenate([rows["mean"], rows.ci_low]))
    high = np.nanmax(np.concatenate([rows["mean"], rows.ci_high]))
    ax.set_ylim(max(-0.02, low - 0.02), min(1.02, high + 0.02))


def _subplots(nrows: int, ncols: int, figsize: tuple[float, float], **kwargs) -> tuple:
    """pyplot.subplots without pyplot: a constrained-layout Figure and its axes."""
    fig = Figure(figsize=figsize, layout=kwargs.pop("layout", "constrained"))
    return fig, fig.subplots(nrows, ncols, **kwargs)


def _panel_names(frame: pd.DataFrame) -> pd.Series:
    """One panel per optimizer (and sweep point): "adam", "adam · model.d_k=32"."""
    return frame.optimizer + np.where(frame.sweep != "", " · " + frame.sweep, "")


def _panel_grid(frame: pd.DataFrame, sharex: bool) -> tuple[Figure, np.ndarray, list, list]:
    """Up to four panels a row, in optimizer order; unused axes hidden. The last panel of
    the first row carries the legend (moved to its right by _legend_outside)."""
    optimizers = ordered(frame.optimizer, OPTIMIZER_ORDER)
    panels = sorted(frame.panel.unique(), key=lambda p: (optimizers.index(p.split(" · ")[0]), p))
    cols = min(4, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = _subplots(nrows, cols, figsize=(3.1 * cols + 1.4, 2.6 * nrows), squeeze=False,
                          sharex=sharex, sharey=True)  # fmt: skip
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    return fig, axes, panels, ordered(frame.attention, ATTENTION_ORDER)


def _legend_outside(ax: Axes, keep: bool, title: str) -> None:
    legend = ax.get_legend()
    if legend is None:
        return
    if not keep:
        legend.remove()
        return
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1), title=title, frameon=False,
                    fontsize=8)  # fmt: skip


# --------------------------------------------------------------------------- drawing them all


def draw_all(
    exp: Experiment,
    table: pd.DataFrame,
    profile: pd.DataFrame,
    folder: Path,
    step: Callable[[], None] | None = None,
    ranked: pd.DataFrame | None = None,
    cd: float | None = None,
) -> list[FigureFile]:
    """Every figure of the report, saved under `folder` (created), in the report's order."""
    folder.mkdir(parents=True, exist_ok=True)
    sns.set_theme(style="whitegrid", context="paper")
    jobs: list[tuple[str, str, str, str | None, Callable[[], Figure | None]]] = []
    interval = ("95% interval from the seed and test-set variance, mean ± t·√(s²/n + v_test) "
                "(the results table's numbers); diverged runs count at chance.")  # fmt: skip
    for task in dict.fromkeys(table.task):
        metric = metric_label(table[table.task == task].metric.iloc[0])
        n = n_caption(table, task)
        jobs += [
            (f"heatmap-{task}", f"{task}: mean {metric}",
             f"Mean over final seeds (diverged ones at chance); rows are attention kinds, "
             f"columns optimizers. {n}", task,
             lambda t=task: heatmap(table, t)),
            (f"ci-{task}", f"{task}: {metric} with 95% intervals",
             f"Mean over final seeds with its {interval} {n}", task,
             lambda t=task: point_plot(table, t)),
            (f"curves-{task}", f"{task}: learning curves",
             "Validation metric during training: mean over final seeds, band = +-1 standard "
             f"deviation; dashed line = the task's target; a diverged run's curve stops. {n}",
             task, lambda t=task: learning_curves(exp, t)),
            (f"lr-{task}", f"{task}: learning-rate sensitivity (tune phase)",
             "Final validation metric of each tuning run against its learning rate (mean over "
             "tune seeds); a rate that diverged leaves a gap.", task,
             lambda t=task: lr_sensitivity(exp, t)),
        ]  # fmt: skip
        keys = sorted({k for v in table[table.task == task].sweep_values for k in v})
        for key in keys:
            jobs.append(
                (f"sweep-{task}-{key}", f"{task}: {metric} against {key}",
                 f"Mean over final seeds with its {interval} {n}", task,
                 lambda t=task, k=key: sweep_plot(table, t, k))
            )  # fmt: skip
        jobs.append(
            (f"diagnostics-{task}", f"{task}: attention logits and entropy",
             "Standard deviation of the attention logits as they enter the softmax, and mean "
             "attention entropy, on a fixed validation batch, per layer, averaged over heads; "
             "at step 0 (before the first update) and at the last validation; mean over seeds "
             f"and optimizers per attention kind. Vaswani et al. (2017, sec. 3.2.1) predict "
             f"that unscaled dot-product logits grow as sqrt(d_k). {n}", task,
             lambda t=task: diagnostics_plot(exp, t))
        )  # fmt: skip
    configs = table.assign(config=[config_label(r) for r in table.itertuples()])
    tasks = table.task.nunique()
    jobs += [
        ("ranking", "Mean rank across tasks",
         f"Mean rank over {tasks} task(s) with its 95% stratified bootstrap interval (seeds and "
         "test examples resampled per task); red bar: the Nemenyi critical difference, when "
         "there are at least 3 tasks and 3 configurations.", None,
         lambda: ranking_plot(ranked, cd)),
        ("profiles", "Performance profiles",
         "Fraction of tasks on which a configuration reached the target within a factor tau "
         "of the fastest configuration (training seconds to target).", None,
         lambda: profile_plot(profile, configs)),
        ("throughput", "Training throughput per attention kind",
         "Median tokens per second over each configuration's final runs; bars span the "
         "optimizers' medians (min to max).", None,
         lambda: throughput_plot(table)),
    ]  # fmt: skip
    files = []
    for name, title, caption, task, draw in jobs:
        fig = draw()
        if step:
            step()
        if fig is None:
            continue
        path = folder / f"{_safe(name)}.png"
        fig.savefig(path, dpi=DPI)
        files.append(FigureFile(_safe(name), title, caption, path, task))
    return files


def figure_count(exp: Experiment, table: pd.DataFrame) -> int:
    """How many figures draw_all will try (for a progress bar)."""
    sweeps = sum(
        len({k for v in table[table.task == t].sweep_values for k in v})
        for t in dict.fromkeys(table.task)
    )
    return 5 * table.task.nunique() + sweeps + 3


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
