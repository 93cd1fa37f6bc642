"""Figures of runs, seed groups, comparisons and sweeps, ready for a paper (matplotlib, Agg backend).

Every figure is written as PNG at print resolution (300 dpi) and as PDF, with a constrained layout so that
titles and labels are never cut off. The PDF carries no creation date, so the same data give the same bytes.

A run's figures plot accuracy, loss and consensus distance against rounds, bytes sent and simulated time
(``{metric}_vs_{axis}``). Where the rows carry ``KEY_std`` columns (a run repeated over seeds, see
:func:`phalanx.sim.report.aggregate_rows`) the band is the mean ± one standard deviation over seeds; else,
for accuracy and loss, the band spans the honest nodes' min and max.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import networkx as nx
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from phalanx.sim.experiment import Result

FORMATS = ("png", "pdf")
DPI = 300


@dataclass(frozen=True, slots=True, kw_only=True)
class Metric:
    key: str  # the metrics row's key of the line
    name: str  # the file name's first part
    label: str  # the y axis
    low: str = ""  # keys of the honest nodes' band (when no seeds band)
    high: str = ""
    unit_range: bool = False  # y in [0, 1]
    log: bool = False  # log y axis when every value is > 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Axis:
    key: str
    name: str
    label: str
    scale: float = 1.0


METRICS = (
    Metric(
        key="acc_mean", name="accuracy", label="test accuracy", low="acc_min", high="acc_max", unit_range=True
    ),
    Metric(key="loss_mean", name="loss", label="test loss", low="loss_min", high="loss_max"),
    Metric(key="consensus", name="consensus", label="consensus distance", log=True),
)
AXES = (
    Axis(key="round", name="round", label="round"),
    Axis(key="bytes", name="bytes", label="MB sent (all nodes)", scale=1e-6),
    Axis(key="virtual_time", name="time", label="simulated time (s)"),
)
# Accuracy of the average of the honest models, drawn beside the per-node mean where the rows carry it.
AVERAGED_MODEL_KEY = "acc_avg"


def save(fig: Figure, base: Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """``base`` plus each format's suffix; PNG at :data:`DPI`, PDF without a creation date."""
    paths = []
    for fmt in formats:
        path = base.with_name(f"{base.name}.{fmt}")
        if fmt == "pdf":
            fig.savefig(path, metadata={"CreationDate": None})
        elif fmt == "svg":
            fig.savefig(path, metadata={"Date": None})
        else:
            fig.savefig(path, dpi=DPI)
        paths.append(path)
    plt.close(fig)
    return paths


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    xs: list[float]
    ys: list[float]
    band: tuple[list[float], list[float]] | None
    band_label: str
    style: str = "-"


def series(rows: Sequence[dict[str, Any]], metric: Metric, axis: Axis, label: str) -> list[Series]:
    """The metric's line (and band) against the axis, from rows where both are numbers."""
    out = []
    keys = [(metric.key, label)]
    if metric.name == "accuracy":
        keys.append((AVERAGED_MODEL_KEY, f"{label}: averaged model" if label else "averaged honest model"))
    for key, text in keys:
        xs, ys, lo, hi = [], [], [], []
        std_key = f"{key}_std"
        seeds = any(std_key in r for r in rows)
        for r in rows:
            x, y = _number(r.get(axis.key)), _number(r.get(key))
            if x is None or y is None:
                continue
            if seeds:
                s = _number(r.get(std_key)) or 0.0
                a, b = y - s, y + s
            elif key == metric.key and metric.low:
                a, b = _number(r.get(metric.low)) or y, _number(r.get(metric.high)) or y
            else:
                a = b = y
            xs.append(x * axis.scale)
            ys.append(y)
            lo.append(a)
            hi.append(b)
        if not xs:
            continue
        n = max((int(r.get("seeds", 0) or 0) for r in rows), default=0)
        banded = seeds or (key == metric.key and bool(metric.low))
        band_label = f"± std over {n} seeds" if seeds else "honest min-max"
        out.append(
            Series(
                label=text or ("honest mean" if key == metric.key else "averaged honest model"),
                xs=xs,
                ys=ys,
                band=(lo, hi) if banded else None,
                band_label=band_label,
                style="-" if key == metric.key else "--",
            )
        )
    return out


def line_figure(
    lines: Sequence[Series], *, metric: Metric, axis: Axis, title: str, base: Path, formats: Sequence[str]
) -> list[Path]:
    return save(draw_lines(lines, metric=metric, axis=axis, title=title), base, formats)


def draw_lines(lines: Sequence[Series], *, metric: Metric, axis: Axis, title: str) -> Figure:
    """One figure of lines (with their bands); the title wraps to the figure's width."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8), layout="constrained")
    markers = len(lines) == 1 or max(len(s.xs) for s in lines) <= 30
    for i, s in enumerate(lines):
        colour = f"C{i}" if s.style == "-" or len(lines) > 2 else "C0"
        ax.plot(s.xs, s.ys, s.style, color=colour, marker="o" if markers else None, ms=3, label=s.label)
        if s.band is not None:
            many = len(lines) > 2
            ax.fill_between(
                s.xs, *s.band, color=colour, alpha=0.2, lw=0, label=None if many else s.band_label
            )
    ax.set_xlabel(axis.label)
    if axis.key == "round":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric.label)
    values = [y for s in lines for y in (*s.ys, *(s.band[0] if s.band else ()))]
    if metric.unit_range:
        ax.set_ylim(0, 1)
    elif metric.log and values and min(values) > 0:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(title, wrap=True)
    return fig


def plot_rows(
    rows: Sequence[dict[str, Any]], out: Path, title: str, *, formats: Sequence[str] = FORMATS
) -> list[Path]:
    """Every (metric, axis) figure of one run (or one seed group) that its rows can draw."""
    paths = []
    for metric in METRICS:
        for axis in AXES:
            lines = series(rows, metric, axis, "")
            if lines:
                base = out / f"{metric.name}_vs_{axis.name}"
                paths += line_figure(lines, metric=metric, axis=axis, title=title, base=base, formats=formats)
    return paths


def plot_compare(
    runs: Sequence[tuple[str, Sequence[dict[str, Any]]]],
    out: Path,
    *,
    formats: Sequence[str] = FORMATS,
    title: str = "",
) -> list[Path]:
    """Several runs overlaid, one figure per (metric, axis): ``compare_{metric}_vs_{axis}``.

    Each run is one line; a seed group keeps its ± std band, a single run shows no band (min-max bands of
    several runs would hide each other)."""
    paths = []
    for metric in METRICS:
        plain = Metric(
            key=metric.key, name=metric.name, label=metric.label, unit_range=metric.unit_range, log=metric.log
        )
        for axis in AXES:
            lines = [s for label, rows in runs for s in series(rows, plain, axis, label)]
            if lines:
                base = out / f"compare_{metric.name}_vs_{axis.name}"
                paths += line_figure(
                    lines,
                    metric=metric,
                    axis=axis,
                    title=title or f"{metric.label} vs {axis.label}",
                    base=base,
                    formats=formats,
                )
    return paths


def plot_run(result: Result, out: Path, *, formats: Sequence[str] = FORMATS) -> list[Path]:
    config = result.plan.config
    paths = plot_rows(result.rows, out, f"{config.name} (seed {config.seed})", formats=formats)
    return paths + plot_topology(result, out / "topology", formats=formats)


def plot_topology(result: Result, base: Path, *, formats: Sequence[str] = FORMATS) -> list[Path]:
    graph = result.plan.graph
    byz, crashed = result.plan.byzantine, result.crashed_ids
    colours = ["tab:red" if i in byz else "tab:gray" if i in crashed else "tab:blue" for i in graph]
    fig, ax = plt.subplots(figsize=(6, 6), layout="constrained")
    n = graph.number_of_nodes()
    pos = nx.spring_layout(graph, seed=0, iterations=50 if n <= 200 else 15)
    nx.draw_networkx_edges(graph, pos, ax=ax, alpha=0.2 if n > 100 else 0.5, width=0.5)
    nx.draw_networkx_nodes(graph, pos, ax=ax, node_color=colours, node_size=max(8, 300 // max(1, n // 16)))
    if n <= 64:
        nx.draw_networkx_labels(graph, pos, ax=ax, font_size=7, font_color="white")
    ax.set_title(f"{result.plan.config.topology}: honest (blue), Byzantine (red), crashed (gray)", wrap=True)
    ax.axis("off")
    return save(fig, base, formats)


def heatmap(
    matrix: Sequence[Sequence[float | None]],
    rows: Sequence[str],
    cols: Sequence[str],
    title: str,
    base: Path,
    *,
    label: str = "worst-case honest accuracy",
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """A labelled grid of values in [0, 1]; ``base`` without suffix (a ``.png`` suffix is dropped)."""
    import numpy as np

    if base.suffix in (".png", ".pdf", ".svg"):
        base = base.with_suffix("")
    data = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 * len(cols) + 3, 0.5 * len(rows) + 2), layout="constrained")
    im = ax.imshow(data, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(cols)):
            if not np.isnan(data[i, j]):
                colour = "w" if data[i, j] < 0.6 else "k"
                ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", color=colour)
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(title, wrap=True)
    return save(fig, base, formats)
