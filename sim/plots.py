"""PNG plots of runs and sweeps (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import networkx as nx

if TYPE_CHECKING:
    from phalanx.sim.experiment import Result


def _evaluated(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("acc_mean") is not None]


def plot_run(result: Result, out: Path) -> None:
    rows = _evaluated(result.rows)
    rounds = [r["round"] for r in rows]
    mb = [r["bytes"] / 1e6 for r in rows]
    mean = [r["acc_mean"] for r in rows]
    lo = [r["acc_min"] for r in rows]
    hi = [r["acc_max"] for r in rows]
    for xs, label, name in (
        (rounds, "round", "accuracy_vs_round.png"),
        (mb, "MB sent (all nodes)", "accuracy_vs_bytes.png"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(xs, mean, marker="o", label="honest mean")
        ax.fill_between(xs, lo, hi, alpha=0.25, label="honest min-max")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title(result.plan.config.name)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
    plot_topology(result, out / "topology.png")


def plot_topology(result: Result, path: Path) -> None:
    graph = result.plan.graph
    byz, crashed = result.plan.byzantine, result.crashed_ids
    colours = ["tab:red" if i in byz else "tab:gray" if i in crashed else "tab:blue" for i in graph]
    fig, ax = plt.subplots(figsize=(6, 6))
    n = graph.number_of_nodes()
    pos = nx.spring_layout(graph, seed=0, iterations=50 if n <= 200 else 15)
    nx.draw_networkx_edges(graph, pos, ax=ax, alpha=0.2 if n > 100 else 0.5, width=0.5)
    nx.draw_networkx_nodes(graph, pos, ax=ax, node_color=colours, node_size=max(8, 300 // max(1, n // 16)))
    if n <= 64:
        nx.draw_networkx_labels(graph, pos, ax=ax, font_size=7, font_color="white")
    ax.set_title(f"{result.plan.config.topology}: honest (blue), Byzantine (red), crashed (gray)")
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def heatmap(
    matrix: Sequence[Sequence[float | None]], rows: Sequence[str], cols: Sequence[str], title: str, path: Path
) -> None:
    import numpy as np

    data = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 * len(cols) + 2.5, 0.5 * len(rows) + 1.8))
    im = ax.imshow(data, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(cols)):
            if not np.isnan(data[i, j]):
                ax.text(
                    j,
                    i,
                    f"{data[i, j]:.2f}",
                    ha="center",
                    va="center",
                    color="w" if data[i, j] < 0.6 else "k",
                )
    fig.colorbar(im, ax=ax, label="worst-case honest accuracy")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
