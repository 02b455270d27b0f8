"""Every figure of the reports, as PNG: accuracy by round, accuracy against a config key, and the language-distance
scatter plots and heatmaps.

Each function draws the data it is given and writes one file through `save_figure`; nothing here reads results,
averages runs into settings or computes distances (mfpt.analysis.report and mfpt.data.uriel do). matplotlib is imported on
the first figure: the CLI and the recorder import this module, and most of their commands draw nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from mfpt.analysis.distance import MEASURES, MIN_CORRELATION_POINTS, DistanceAnalysis, format_p
from mfpt.config.specs import PARADIGMS
from mfpt.core.files import atomic_write
from mfpt.core.stats import mean_std
from mfpt.data.uriel import format_number

DPI = 120
UNKNOWN_PARADIGM_COLOR = "C7"  # grey, for a paradigm this mfpt does not know (read from an older results.json)


@dataclass(frozen=True)
class Series:
    """One line of a figure: its label, its paradigm (its colour), and the values over seeds (0-1) at each x."""

    label: str
    paradigm: str
    points: Sequence[tuple[float, Sequence[float]]]
    level: bool = False  # a paradigm without rounds: its single point is drawn as a level across the plot


def new_figure(width: float, height: float) -> Any:
    """An empty figure on the Agg canvas (matplotlib's object API: no pyplot state, no backend switch, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write `fig` to `path` as a PNG in one atomic step, then close it (its artists are released)."""
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    fig.clear()
    return path


def paradigm_color(paradigm: str) -> str:
    """The same colour for a paradigm in every figure: tab10 in the paradigms' table order."""
    return f"C{PARADIGMS.get(paradigm).order}" if paradigm in PARADIGMS else UNKNOWN_PARADIGM_COLOR


def _percent_stats(series: Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, mean, std) in percent at every x that has values, in x order."""
    stats = [(x, summary) for x, values in sorted(series.points, key=lambda p: p[0])
             if (summary := mean_std(values)) is not None]
    xs = np.array([x for x, _ in stats], dtype=float)
    means = np.array([100 * m for _, (m, _) in stats], dtype=float)
    stds = np.array([100 * s for _, (_, s) in stats], dtype=float)
    return xs, means, stds


# ---------------------------------------------------------------------------------------------- runs


def plot_round_curves(series: Sequence[Series], path: Path, title: str = "", metric: str = "accuracy") -> Path:
    """Mean `metric` (accuracy, or chrF++ for generation) over the training languages by round, one line per series,
    band = ± std over seeds."""
    fig = new_figure(6.4, 3.8)
    ax = fig.subplots()
    last_round = max((max((x for x, _ in s.points), default=0) for s in series), default=1)
    for s in series:
        rounds, means, stds = _percent_stats(s)
        if not len(rounds):
            continue
        color = paradigm_color(s.paradigm)
        if s.level and len(rounds) == 1:
            ax.axhline(means[0], linestyle="--", linewidth=1.2, color=color, label=s.label)
            ax.axhspan(max(means[0] - stds[0], 0), min(means[0] + stds[0], 100), color=color, alpha=0.12)
            continue
        ax.plot(rounds, means, marker="o", markersize=3, color=color, label=s.label)
        ax.fill_between(rounds, np.clip(means - stds, 0, 100), np.clip(means + stds, 0, 100), color=color, alpha=0.18)
    ax.set_xlabel("round")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole: no 0.5, 1.5 ticks
    ax.set_ylabel(f"mean {metric} over languages (%)")
    ax.set_xlim(0.5 if last_round >= 1 else -0.5, max(last_round, 1) + 0.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def plot_axis(panels: Sequence[tuple[str, Sequence[Series]]], ticks: Sequence[tuple[float, str]], xlabel: str,
              path: Path) -> Path:
    """Accuracy against a numeric config key: one panel per (title, series), error bars = ± std over seeds.

    A wide range of x values (largest / smallest >= 8) gets a log axis."""
    fig = new_figure(4.6 * len(panels), 3.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    positions = [x for x, _ in ticks]
    for ax, (title, lines) in zip(axes, panels):
        for s in lines:
            xs, means, stds = _percent_stats(s)
            if len(xs):
                ax.errorbar(xs, means, yerr=stds, marker="o", markersize=4, capsize=3, label=s.label,
                            color=paradigm_color(s.paradigm))
        if positions and min(positions) > 0 and max(positions) / min(positions) >= 8:
            ax.set_xscale("log")
        ax.set_xticks(positions, [label for _, label in ticks])
        ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------- language distance


def plot_distance_analysis(analysis: DistanceAnalysis, out_dir: Path) -> dict[str, Path]:
    """The analysis's figures in out_dir: "reference" / "federation" (distance vs. gain) and "heatmap"."""
    out_dir = Path(out_dir)
    figures = {measure: plot_distance_vs_gain(analysis, measure, out_dir / f"distance_vs_gain_{measure}.png")
               for measure in MEASURES}
    figures["heatmap"] = plot_distance_heatmaps(analysis.matrices, out_dir / "distance_heatmaps.png")
    return figures


def plot_distance_vs_gain(analysis: DistanceAnalysis, measure: str, path: Path) -> Path:
    """One scatter plot per (gain, distance kind) with a least-squares line and both correlations in the title."""
    distances, gains = analysis.distances(measure), analysis.gains
    kinds, names = list(distances.columns), list(gains.columns)
    fig = new_figure(3.1 * len(kinds), 2.9 * max(len(names), 1))
    axes = np.atleast_2d(fig.subplots(max(len(names), 1), len(kinds), squeeze=False))
    for row, gain in enumerate(names):
        for col, kind in enumerate(kinds):
            ax = axes[row, col]
            x, y = distances[kind].to_numpy(float), gains[gain].to_numpy(float)
            keep = np.isfinite(x) & np.isfinite(y)
            ax.scatter(x[keep], y[keep], s=22, color="tab:blue")
            for lang, xi, yi in zip(distances.index[keep], x[keep], y[keep]):
                ax.annotate(lang, (xi, yi), textcoords="offset points", xytext=(3, 3), fontsize=8)
            if keep.sum() >= MIN_CORRELATION_POINTS and np.ptp(x[keep]) > 0:
                slope, intercept = np.polyfit(x[keep], y[keep], 1)
                xs = np.linspace(x[keep].min(), x[keep].max(), 2)
                ax.plot(xs, slope * xs + intercept, color="tab:red", linewidth=1)
            c = analysis.correlation(kind, measure, gain)
            ax.set_title(f"{kind}\nr={format_number(c.pearson_r, 2)} (p={format_p(c.pearson_p)}), "
                         f"ρ={format_number(c.spearman_rho, 2)} (p={format_p(c.spearman_p)})", fontsize=8)
            ax.axhline(0, color="grey", linewidth=0.5)
            ax.tick_params(labelsize=7)
            if row == len(names) - 1:
                ax.set_xlabel(MEASURES[measure], fontsize=8)
            if col == 0:
                ax.set_ylabel(f"{gain}\n(accuracy points)", fontsize=8)
    return save_figure(fig, path)


def plot_distance_heatmaps(matrices: Mapping[str, pd.DataFrame], path: Path) -> Path:
    """One heatmap per distance kind of the pairwise matrices (values printed up to 15 languages)."""
    kinds = list(matrices)
    cols = min(3, len(kinds))
    rows = math.ceil(len(kinds) / cols)
    n = len(next(iter(matrices.values())))
    side = max(3.0, 0.45 * n + 1.5)
    fig = new_figure(side * cols, side * rows)
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False)).ravel()
    image = None
    for ax, kind in zip(axes, kinds):
        m = matrices[kind]
        image = ax.imshow(m.to_numpy(float), vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_xticks(range(n), list(m.columns), rotation=90, fontsize=7)
        ax.set_yticks(range(n), list(m.index), fontsize=7)
        ax.set_title(kind, fontsize=9)
        if n <= 15:  # beyond that the numbers overlap; the colour still reads
            for i in range(n):
                for j in range(n):
                    v = m.iat[i, j]
                    ax.text(j, i, "–" if math.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if (math.isnan(v) or v < 0.6) else "black")
    for ax in axes[len(kinds):]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=list(axes[: len(kinds)]), shrink=0.6, label="URIEL distance")
    return save_figure(fig, path)
