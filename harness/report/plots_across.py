"""The report's figures across tasks: mean ranks, performance profiles and throughput."""

from __future__ import annotations

import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from harness.report.style import LINESTYLES, Style, subplots


def ranking_plot(ranked: pd.DataFrame, cd: float | None = None) -> Figure | None:
    """Mean rank over tasks with its 95% bootstrap interval, best at the top; the Nemenyi
    critical difference as a bar when there is one."""
    if ranked is None or len(ranked) < 2:
        return None
    rows = ranked.iloc[::-1]
    fig, ax = subplots(1, 1, figsize=(7.2, 1.2 + 0.24 * len(rows)))
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


def profile_plot(profile: pd.DataFrame, configs: pd.DataFrame, style: Style) -> Figure | None:
    """Performance profiles: colour = attention kind, line style = optimizer."""
    if profile.empty or not profile.to_numpy().any():  # nobody reached a target
        return None
    configs = configs.drop_duplicates("config")
    kinds = style.ordered("attention", configs.attention)
    palette = style.palette(kinds)
    optimizers = style.ordered("optimizer", configs.optimizer)
    styles = {o: LINESTYLES[i % len(LINESTYLES)] for i, o in enumerate(optimizers)}
    fig, ax = subplots(1, 1, figsize=(7.6, 3.8))
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


def throughput_plot(table: pd.DataFrame, style: Style) -> Figure | None:
    """Median training throughput (tokens/s) per attention kind, one panel per task."""
    data = table.dropna(subset=["tokens_per_s"])
    if data.empty:
        return None
    tasks = list(dict.fromkeys(data.task))
    kinds = style.ordered("attention", data.attention)
    fig, axes = subplots(1, len(tasks), figsize=(1.2 + 2.9 * len(tasks), 3.0), squeeze=False,
                             layout="constrained")  # fmt: skip
    for ax, task in zip(axes[0], tasks, strict=True):
        sns.barplot(data=data[data.task == task], x="attention", y="tokens_per_s", hue="attention",
                    order=kinds, hue_order=kinds, palette=style.palette(kinds),
                    errorbar=("pi", 100), ax=ax, legend=False)  # fmt: skip
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("attention")
        ax.set_ylabel("training tokens per second")
        ax.tick_params(axis="x", labelrotation=30)
    return fig
