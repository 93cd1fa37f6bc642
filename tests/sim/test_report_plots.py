"""Figures for print: titles of any length stay inside the figure and above the plot; bands from seeds."""

from __future__ import annotations

import pytest

from phalanx.sim.plots import AXES, METRICS, Series, draw_lines, series


@pytest.mark.parametrize("title", ["short", "median_alie_0.25 on barabasi-albert:3 with 64 nodes " * 6])
def test_title_is_never_cut_off(title) -> None:
    line = Series("honest mean", [0, 1, 2], [0.1, 0.5, 0.7], ([0.0, 0.4, 0.6], [0.2, 0.6, 0.8]), "band")
    fig = draw_lines([line], metric=METRICS[0], axis=AXES[0], title=title)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    box = fig.axes[0].title.get_window_extent(renderer)
    axes = fig.axes[0].get_window_extent(renderer)
    assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1
    assert fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1
    assert box.y0 >= axes.y1 - 1  # above the plot, not over it


def test_seed_rows_give_a_std_band_and_single_rows_a_min_max_band() -> None:
    seeded = [{"round": 0, "acc_mean": 0.5, "acc_mean_std": 0.1, "seeds": 3, "bytes": 2_000_000}]
    (line,) = series(seeded, METRICS[0], AXES[1], "")
    assert line.xs == [2.0] and line.band == ([0.4], [0.6]) and "3 seeds" in line.band_label
    single = [{"round": 0, "acc_mean": 0.5, "acc_min": 0.2, "acc_max": 0.9}, {"round": 1, "acc_mean": None}]
    (line,) = series(single, METRICS[0], AXES[0], "")
    assert line.xs == [0.0] and line.band == ([0.2], [0.9]) and line.band_label == "honest min-max"


def test_averaged_model_accuracy_is_drawn_where_rows_carry_it() -> None:
    rows = [{"round": 0, "acc_mean": 0.5, "acc_min": 0.4, "acc_max": 0.6, "acc_avg": 0.7}]
    lines = series(rows, METRICS[0], AXES[0], "")
    assert [s.ys for s in lines] == [[0.5], [0.7]] and lines[1].band is None
