"""A sweep on the local process pool vs on a local Ray cluster with as many CPUs: wall time and per-cell overhead.

    .venv/bin/python scripts/bench_sweep.py --workers 2 --repeat 2

The grid has 48 cells, all distinct runs (4 rules x 4 attacks x 3 Byzantine fractions, none zero, so no cell
reuses another's run) of a tiny simulation (blobs, 8 nodes, 5 rounds by default), written to a scratch folder
without figures unless ``--plots``. Each backend runs it ``--repeat`` times, alternating; the table shows the
fastest and the median wall time of each, and

- ``cell s``: the mean time of one cell inside its worker (simulate and write its files), and
- ``overhead/cell``: ``wall x workers / cells - cell s``, what each cell costs beyond its own work: starting
  and feeding the workers, moving jobs and results, idle CPUs at the end.

The Ray cluster (``ray.init(num_cpus=workers)``) is started once, before the timed runs; its start-up time is
printed on its own. Both backends must give the same CSV rows, which the script checks.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from phalanx.sim.report import table
from phalanx.sim.sweep import LocalPool, Pool, SweepResult, expand, sweep

GRID = {
    "rule": ["trimmed-mean", "median", "cs-plus", "clipped-gossip"],
    "attack": ["alie", "ipm", "dissensus", "label-flip"],
    "byzantine_fraction": [0.125, 0.25, 0.375],
}


def timed(pool: Pool, points: list[Any], *, threads: int, plots: bool) -> tuple[float, SweepResult]:
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        start = time.perf_counter()
        result = sweep(points, pool=pool, out=Path(tmp), plots=plots, threads=threads)
        return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--plots", action="store_true", help="draw every cell's figures too")
    args = parser.parse_args()
    from phalanx.sim.ray_pool import RayPool

    base = {
        "dataset": "blobs",
        "nodes": args.nodes,
        "rounds": args.rounds,
        "topology": "regular:4",
        "eval_every": args.rounds,
        "rule_params": {"f": 1},
    }
    points = expand(base, GRID)
    assert len(points) == 48
    local = LocalPool(args.workers)
    start = time.perf_counter()
    with RayPool("local", workers=args.workers) as ray_pool:
        ray_start = time.perf_counter() - start
        cpus = ray_pool.cpus()
        best: dict[str, tuple[float, SweepResult]] = {}
        walls: dict[str, list[float]] = {}
        for _ in range(args.repeat):
            for name, pool, threads in (("local pool", local, local.threads), ("Ray (local)", ray_pool, 1)):
                wall, result = timed(pool, points, threads=threads, plots=args.plots)
                print(f"{name}: {wall:.2f} s", flush=True)
                walls.setdefault(name, []).append(wall)
                if name not in best or wall < best[name][0]:
                    best[name] = (wall, result)
    a, b = (r for _, r in best.values())
    assert a.rows == b.rows, "the two backends disagree"
    rows = []
    for name, (wall, result) in best.items():
        cell = statistics.fmean(t["seconds"] for t in result.timings)
        rows.append(
            {
                "backend": name,
                "workers": args.workers,
                "cells": len(points),
                "wall": wall,
                "median": statistics.median(walls[name]),
                "cell": cell,
                "overhead": wall * args.workers / len(points) - cell,
            }
        )
    print(f"Ray cluster of {cpus} CPUs started in {ray_start:.1f} s (not in the wall times)")
    print(
        table(
            rows,
            [
                ("backend", "backend", ""),
                ("workers", "workers", ""),
                ("cells", "cells", ""),
                ("wall", "wall s", ".2f"),
                ("median", "median wall s", ".2f"),
                ("cell", "cell s", ".3f"),
                ("overhead", "overhead/cell s", ".3f"),
            ],
        )
    )
    print(f"Ray wall / local wall: {rows[1]['wall'] / rows[0]['wall']:.3f}")


if __name__ == "__main__":
    main()
