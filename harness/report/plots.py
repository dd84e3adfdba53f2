"""The report's figures per task, each a function of the collected runs or the results table
returning a matplotlib `Figure` (None when there is nothing to draw): the metric as a heatmap
and with intervals, learning curves, learning-rate sensitivity, sweeps, attention diagnostics.
`harness.report.figures` lists them, with their titles and captions."""

from __future__ import annotations

import math

import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from harness import schema
from harness.report.collect import Experiment
from harness.report.style import (
    LINESTYLES,
    Style,
    clip_to_metric,
    hollow_without_interval,
    legend_outside,
    metric_label,
    panel_grid,
    panel_names,
    subplots,
    yerr,
)


def heatmap(table: pd.DataFrame, task: str, style: Style) -> Figure:
    """Mean test metric, attention (rows) x optimizer (columns), a panel per sweep point."""
    rows = table[table.task == task]
    sweeps = list(dict.fromkeys(rows.sweep))
    fig, axes = subplots(
        1, len(sweeps), figsize=(1.2 + 3.6 * len(sweeps), 3.2), squeeze=False, layout="constrained"
    )
    cmap = "viridis" if rows.higher_is_better.iloc[0] else "viridis_r"
    vmin, vmax = np.nanmin(rows["mean"]), np.nanmax(rows["mean"])
    for ax, sweep in zip(axes[0], sweeps, strict=True):
        part = rows[rows.sweep == sweep]
        grid = part.pivot_table(index="attention", columns="optimizer", values="mean")
        grid = grid.reindex(
            index=style.ordered("attention", part.attention),
            columns=style.ordered("optimizer", part.optimizer),
        )
        sns.heatmap(grid, ax=ax, annot=True, fmt=".3f", cmap=cmap, vmin=vmin, vmax=vmax,
                    cbar=ax is axes[0][-1], cbar_kws={"label": metric_label(rows)},
                    linewidths=0.5)  # fmt: skip
        ax.set_xlabel("optimizer")
        ax.set_ylabel("attention")
        ax.set_title(sweep or f"{task}: mean {metric_label(rows)}", fontsize=10)
    return fig


def point_plot(table: pd.DataFrame, task: str, style: Style) -> Figure:
    """Mean test metric with its 95% interval (seed plus test-set variance; the results table's),
    per optimizer and attention kind, a panel per sweep point."""
    rows = table[table.task == task]
    sweeps = list(dict.fromkeys(rows.sweep))
    kinds = style.ordered("attention", rows.attention)
    palette = style.palette(kinds)
    fig, axes = subplots(1, len(sweeps), figsize=(1.6 + 4.2 * len(sweeps), 3.3), squeeze=False,
                             sharey=True, layout="constrained")  # fmt: skip
    width = 0.7 / max(1, len(kinds))
    for ax, sweep in zip(axes[0], sweeps, strict=True):
        part = rows[rows.sweep == sweep]
        optimizers = style.ordered("optimizer", part.optimizer)
        for k, kind in enumerate(kinds):
            mine = part[part.attention == kind].set_index("optimizer").reindex(optimizers)
            x = np.arange(len(optimizers)) + (k - (len(kinds) - 1) / 2) * width
            ax.errorbar(x, mine["mean"], yerr=yerr(mine), fmt="o", color=palette[kind],
                        label=kind, capsize=3, markersize=5, linewidth=1.2)  # fmt: skip
            hollow_without_interval(ax, x, mine, palette[kind])
        ax.set_xticks(range(len(optimizers)), optimizers)
        ax.set_xlabel("optimizer")
        ax.set_ylabel(metric_label(part))
        clip_to_metric(ax, part)
        ax.set_title(sweep or task, fontsize=10)
    axes[0][-1].legend(title="attention", fontsize=8, frameon=False, loc="upper left",
                       bbox_to_anchor=(1.02, 1))  # fmt: skip
    return fig


def learning_curves(exp: Experiment, task: str, style: Style) -> Figure | None:
    """Validation metric against step, mean over seeds with a +-1 s.d. band, a panel per
    optimizer (and sweep point)."""
    final = exp.final[exp.final.task == task]
    hist = exp.histories
    if final.empty:
        return None
    points = hist[hist.key == schema.val_metric(final.metric.iloc[0])].merge(
        final[["run_id", "attention", "optimizer", "sweep"]], on="run_id"
    )
    if points.empty:
        return None
    points["panel"] = panel_names(points)
    fig, axes, panels, kinds = panel_grid(points, style, sharex=True)
    target = final.target.iloc[0]
    for ax, panel in zip(axes.flat, panels, strict=False):
        part = points[points.panel == panel]
        sns.lineplot(data=part, x="step", y="value", hue="attention", hue_order=kinds,
                     palette=style.palette(kinds), errorbar="sd", ax=ax,
                     legend=ax is axes[0, -1])  # fmt: skip
        if not math.isnan(target):
            ax.axhline(target, color="0.5", linewidth=0.8, linestyle="--")
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel(metric_label(final, "validation"))
        legend_outside(ax, ax is axes[0, -1], "attention")
    return fig


def lr_sensitivity(exp: Experiment, task: str, style: Style) -> Figure | None:
    """Tune phase: final validation metric against learning rate (log axis), per optimizer."""
    tune = exp.tune[(exp.tune.task == task) & (exp.tune.outcome == "ok")].dropna(subset=["val"])
    if tune.empty:
        return None
    tune = furthest_rung(tune)
    tune = tune.assign(panel=panel_names(tune))
    fig, axes, panels, kinds = panel_grid(tune, style, sharex=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        part = tune[tune.panel == panel]
        sns.lineplot(data=part, x="lr", y="val", hue="attention", hue_order=kinds,
                     palette=style.palette(kinds), marker="o", errorbar=None, ax=ax,
                     legend=ax is axes[0, -1])  # fmt: skip
        pruned = part[part.pruned].groupby(["attention", "lr"], as_index=False).val.mean()
        for kind, points in pruned.groupby("attention"):  # hollow: dropped by halving
            ax.scatter(points.lr, points.val, s=30, facecolors="white", zorder=3,
                       edgecolors=style.palette(kinds)[kind], linewidths=1.2)  # fmt: skip
        ax.set_xscale("log")
        rates = sorted(part.lr.unique())
        ax.set_xticks(rates, [f"{r:g}" for r in rates], rotation=45 if len(rates) > 4 else 0)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("learning rate")
        ax.set_ylabel(metric_label(tune, "validation"))
        legend_outside(ax, ax is axes[0, -1], "attention")
    return fig


def furthest_rung(tune: pd.DataFrame) -> pd.DataFrame:
    """Each rate's tune runs at the largest budget (steps) it reached, with `pruned` True where
    that is below the largest its group reached: successive halving dropped the rate there.
    Exhaustive tuning has one budget per group, so nothing is pruned."""
    group = ["task", "sweep", "attention", "optimizer"]
    reached = tune.groupby([*group, "lr"]).steps.transform("max")
    tune = tune[tune.steps == reached]
    return tune.assign(pruned=tune.steps < tune.groupby(group).steps.transform("max"))


def sweep_plot(table: pd.DataFrame, task: str, key: str, style: Style) -> Figure | None:
    """Mean test metric (with its 95% CI) against one swept value, per attention kind, a panel
    per optimizer."""
    swept = table.sweep_values.map(lambda point: key in point)  # pandas 3: no Series & list
    rows = table[(table.task == task) & swept]
    rows = rows.dropna(subset=["mean"])
    if rows.empty:
        return None
    rows = rows.assign(swept=[v[key] for v in rows.sweep_values])
    optimizers = style.ordered("optimizer", rows.optimizer)
    kinds = style.ordered("attention", rows.attention)
    palette = style.palette(kinds)
    fig, axes = subplots(1, len(optimizers), figsize=(1.6 + 3.4 * len(optimizers), 3.0),
                             squeeze=False, sharey=True, layout="constrained")  # fmt: skip
    numeric = all(isinstance(v, int | float) for v in rows.swept)
    for ax, optimizer in zip(axes[0], optimizers, strict=True):
        for kind in kinds:
            mine = rows[(rows.optimizer == optimizer) & (rows.attention == kind)]
            mine = mine.sort_values("swept") if numeric else mine
            x = mine.swept if numeric else mine.swept.astype(str)
            ax.errorbar(x, mine["mean"], yerr=yerr(mine), marker="o", capsize=3,
                        color=palette[kind], label=kind, linewidth=1.3, markersize=4)  # fmt: skip
            hollow_without_interval(ax, x, mine, palette[kind])
        if numeric and min(rows.swept) > 0 and max(rows.swept) / min(rows.swept) >= 8:
            ax.set_xscale("log", base=2)
            ticks = sorted(set(rows.swept))
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(optimizer, fontsize=10)
        ax.set_xlabel(key)
        ax.set_ylabel(metric_label(rows))
        clip_to_metric(ax, rows)
    axes[0][-1].legend(title="attention", fontsize=8, frameon=False, loc="upper left",
                       bbox_to_anchor=(1.02, 1))  # fmt: skip
    return fig


ATTN_STATS = {"logit_std": "attention logit std", "entropy": "attention entropy (nats)"}


def diagnostics_plot(exp: Experiment, task: str, style: Style) -> Figure | None:
    """Attention diagnostics (`attn/logit_std/layer<i>`, `attn/entropy/layer<i>`) at the first
    logged step (step 0, before training) and at the last validation: mean over seeds (and
    optimizers) per attention kind, against a swept model.d_k (log2 axis) when there is one,
    else against the layer. None when no run logged them."""
    final = exp.final[exp.final.task == task]
    hist = exp.histories
    points = hist[hist.key.str.startswith(schema.ATTN_PREFIX)]
    if points.empty or final.empty:
        return None
    points = points.merge(final[["run_id", "attention", "sweep_values"]], on="run_id")
    if points.empty:
        return None
    parts = points.key.str.extract(rf"^{schema.ATTN_PREFIX}(?P<stat>[^/]+)/layer(?P<layer>\d+)$")
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
    kinds = style.ordered("attention", data.attention)
    palette = style.palette(kinds)
    layers = sorted(data.layer.unique())
    if swept and len(layers) > len(LINESTYLES):
        layers = [layers[0], layers[-1]]
    stats_ = [s for s in ATTN_STATS if s in set(data.stat)]
    fig, axes = subplots(len(stats_), len(moments), figsize=(1.8 + 3.6 * len(moments),
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
