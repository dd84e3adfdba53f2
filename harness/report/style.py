"""What every figure of a report shares: one colour per attention kind, the grid's order of
kinds and optimizers, axis labels from the run's metric, and a few layout helpers.

Figures are made with `Figure()` rather than pyplot, so no GUI backend or global figure state
is involved (and nothing is left open between figures). Every attention kind has one colour in
every figure of a report (seaborn's colour-blind-safe palette, assigned in the grid's order of
kinds), and every axis is labelled with what it shows and its unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from harness.report.collect import Order
from harness.report.stats import config_label

LINESTYLES = ["-", "--", ":", "-."]
DPI = 110


@dataclass(frozen=True)
class Style:
    """The grid's order and the attention kinds' colours, fixed once for a whole report."""

    order: Order = field(default_factory=Order)
    colours: dict[str, tuple] = field(default_factory=dict)  # attention kind -> colour

    @classmethod
    def of(cls, order: Order, kinds: pd.Series | list[str]) -> Style:
        names = order.of("attention", kinds)
        return cls(
            order, dict(zip(names, sns.color_palette("colorblind", len(names)), strict=True))
        )

    def ordered(self, axis: str, values: pd.Series | list[str]) -> list[str]:
        return self.order.of(axis, values)

    def palette(self, kinds: list[str]) -> dict[str, tuple]:
        """Each kind's colour; a kind unseen when the style was made gets a grey."""
        return {k: self.colours.get(k, (0.5, 0.5, 0.5)) for k in kinds}


def metric_label(rows: pd.DataFrame, split: str = "test") -> str:
    """ "test accuracy", "validation bits per character": the split and the metric's label."""
    return f"{split} {rows.metric_label.iloc[0]}"


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


def yerr(rows: pd.DataFrame) -> np.ndarray:
    """Error bars from the interval (a percentile interval can leave the mean outside it:
    the bar then stops at the mean)."""
    err = np.vstack([rows["mean"] - rows.ci_low, rows.ci_high - rows["mean"]])
    return np.clip(np.nan_to_num(err), 0, None)


def hollow_without_interval(ax: Axes, x: Any, rows: pd.DataFrame, color: Any) -> None:
    """Draw the points of `rows` that have no interval (nothing varied: the results table
    says why) hollow, so that a point without a bar does not read as a precise one."""
    missing = (rows.ci_low.isna() | rows.ci_high.isna()).to_numpy() & rows["mean"].notna()
    if missing.any():
        ax.plot(np.asarray(x)[missing.to_numpy()], rows["mean"][missing], "o", zorder=3,
                markerfacecolor="white", markeredgecolor=color, markersize=5)  # fmt: skip


def clip_to_metric(ax: Axes, rows: pd.DataFrame) -> None:
    """A metric with a finite range (accuracy in [0, 1]) keeps the axis within it, with a
    margin of 2% of the range, so an interval never squashes the means into a line."""
    floor, ceiling = float(rows.metric_low.iloc[0]), float(rows.metric_high.iloc[0])
    if not (math.isfinite(floor) and math.isfinite(ceiling)) or ceiling <= floor:
        return
    margin = 0.02 * (ceiling - floor)
    low = np.nanmin(np.concatenate([rows["mean"], rows.ci_low]))
    high = np.nanmax(np.concatenate([rows["mean"], rows.ci_high]))
    ax.set_ylim(max(floor - margin, low - margin), min(ceiling + margin, high + margin))


def subplots(nrows: int, ncols: int, figsize: tuple[float, float], **kwargs) -> tuple:
    """pyplot.subplots without pyplot: a constrained-layout Figure and its axes."""
    fig = Figure(figsize=figsize, layout=kwargs.pop("layout", "constrained"))
    return fig, fig.subplots(nrows, ncols, **kwargs)


def panel_names(frame: pd.DataFrame) -> pd.Series:
    """One panel per optimizer (and sweep point): "adam", "adam · model.d_k=32"."""
    return frame.optimizer + np.where(frame.sweep != "", " · " + frame.sweep, "")


def panel_grid(
    frame: pd.DataFrame, style: Style, sharex: bool
) -> tuple[Figure, np.ndarray, list, list]:
    """Up to four panels a row, in optimizer order; unused axes hidden. The last panel of
    the first row carries the legend (moved to its right by legend_outside)."""
    optimizers = style.ordered("optimizer", frame.optimizer)
    panels = sorted(frame.panel.unique(), key=lambda p: (optimizers.index(p.split(" · ")[0]), p))
    cols = min(4, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = subplots(nrows, cols, figsize=(3.1 * cols + 1.4, 2.6 * nrows), squeeze=False,
                         sharex=sharex, sharey=True)  # fmt: skip
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    return fig, axes, panels, style.ordered("attention", frame.attention)


def legend_outside(ax: Axes, keep: bool, title: str) -> None:
    legend = ax.get_legend()
    if legend is None:
        return
    if not keep:
        legend.remove()
        return
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1), title=title, frameon=False,
                    fontsize=8)  # fmt: skip
