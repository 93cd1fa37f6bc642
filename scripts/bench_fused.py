"""The native kernels of aggregation.fused against the torch paths they replace, side by side.

    .venv/bin/python scripts/bench_fused.py

For each (n, f, d): the trimmed mean by the fused kernel over separate rows, by the torch selection
path (2f min/max passes, f <= 2), by the column sort, and a weighted sum by the kernel vs the torch
chain of ``add_`` (D-PSGD's mixing), plus ``x.sum(dim=0)`` as a memory-speed yardstick. One thread,
milliseconds per call (mean over repetitions after a warm-up). n = 9, d = 50,890 is a gossip node of
the simulator's MLP with 8 neighbours; n = 32, f = 8, d = 1e6 is issue 3's benchmark size.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from phalanx.aggregation import fused
from phalanx.aggregation.coordinatewise import _row_average, _trimmed_by_selection, sorted_columns
from phalanx.sim.report import table

CASES = (
    (9, 1, 50_890, 300),
    (9, 2, 50_890, 300),
    (17, 4, 50_890, 100),
    (32, 4, 1_000_000, 5),
    (32, 8, 1_000_000, 5),
)


def timed(fn: Callable[[], object], reps: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e3


def torch_mixing(rows: list[torch.Tensor], w: float) -> torch.Tensor:
    out = rows[0] * w
    for row in rows[1:]:
        out.add_(row, alpha=w)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the repetitions")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not fused.available():
        raise SystemExit("the native kernels are not built (or PHALANX_NATIVE=0): nothing to compare")
    out = []
    for n, f, d, reps in CASES:
        reps = max(1, int(reps * args.scale))
        x = torch.randn(n, d)
        rows = [row.clone() for row in x]
        w = 1.0 / n
        out.append(
            {
                "shape": f"n={n} f={f} d={d:,}",
                "kernel": timed(lambda: fused.trimmed_mean_of(rows, f), reps),  # noqa: B023
                "selection": timed(lambda: _trimmed_by_selection(x, f), reps) if f <= 2 else float("nan"),  # noqa: B023
                "sort": timed(lambda: _row_average(sorted_columns("t", x)[f : n - f]), max(1, reps // 10)),  # noqa: B023
                "wsum": timed(lambda: fused.weighted_sum_of(rows, [w] * n), reps),  # noqa: B023
                "addchain": timed(lambda: torch_mixing(rows, w), reps),  # noqa: B023
                "sum": timed(lambda: x.sum(dim=0), reps),  # noqa: B023
            }
        )
    print(
        table(
            out,
            (
                ("shape", "rows", ""),
                ("kernel", "trimmed: kernel ms", ".3f"),
                ("selection", "torch selection ms", ".3f"),
                ("sort", "column sort ms", ".3f"),
                ("wsum", "mixing: kernel ms", ".3f"),
                ("addchain", "torch add_ chain ms", ".3f"),
                ("sum", "x.sum(0) ms", ".3f"),
            ),
        )
    )


if __name__ == "__main__":
    main()
