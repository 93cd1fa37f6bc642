"""Grid sweeps: every combination of the grid's values applied to a base config, run in parallel processes.

A grid maps config keys to lists of values; ``rule_params.f`` style keys set one entry of a table. Every
combination is checked (:func:`phalanx.sim.experiment.plan`) before any of them trains. Results go to one
CSV (one row per run: the grid values and the run's summary) and a heatmap of the worst-case honest
accuracy over everything else (attacks, topologies, seeds) per rule and Byzantine fraction.
"""

from __future__ import annotations

import csv
import itertools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from phalanx.sim.config import ConfigError, SimConfig, from_mapping

SUMMARY_KEYS = (
    "acc_mean",
    "acc_min",
    "acc_max",
    "loss_mean",
    "consensus",
    "bytes",
    "messages",
    "live",
    "spectral_gap",
    "wall_time",
)


def expand(base: dict[str, Any], grid: dict[str, Sequence[Any]]) -> list[tuple[dict[str, Any], SimConfig]]:
    """Every combination of the grid over ``base``: (the grid values, the config)."""
    keys = list(grid)
    for key in keys:
        if not grid[key]:
            raise ConfigError(f"sweep: no values for {key!r}")
    out = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
        point = dict(zip(keys, combo))
        for key, value in point.items():
            table, dot, sub = key.partition(".")
            if dot:
                data[table] = {**data.get(table, {}), sub: value}
            else:
                data[key] = value
        data["name"] = "_".join(f"{str(v).replace('/', '-')}" for v in combo) or "run"
        out.append((point, from_mapping(data)))
    return out


def run_one(config_dict: dict[str, Any], out_dir: str | None, threads: int) -> dict[str, Any]:
    import torch

    from phalanx.sim.experiment import plan, run
    from phalanx.sim.report import summary, write_run

    torch.set_num_threads(threads)
    config = from_mapping(config_dict)
    result = run(plan(config))
    if out_dir:
        return write_run(result, Path(out_dir) / config.name, plots=False)
    return summary(result)


def sweep(
    points: list[tuple[dict[str, Any], SimConfig]],
    *,
    workers: int,
    out: Path | None,
    on_done: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every point; rows come back in grid order whatever order the processes finish in."""
    from phalanx.sim.experiment import plan

    for _, config in points:
        plan(config)  # every bad combination fails here, before anything trains
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    rows: list[dict[str, Any] | None] = [None] * len(points)
    jobs = [(c.to_dict(), str(out) if out else None, threads) for _, c in points]
    if workers <= 1:
        for i, job in enumerate(jobs):
            rows[i] = {**points[i][0], **_pick(run_one(*job))}
            if on_done:
                on_done(rows[i])  # type: ignore[arg-type]
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(run_one, *job): i for i, job in enumerate(jobs)}
            for future, i in futures.items():
                rows[i] = {**points[i][0], **_pick(future.result())}
                if on_done:
                    on_done(rows[i])  # type: ignore[arg-type]
    return [r for r in rows if r is not None]


def _pick(info: dict[str, Any]) -> dict[str, Any]:
    return {k: info.get(k) for k in SUMMARY_KEYS}


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    keys = list(rows[0]) if rows else []
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def worst_case(
    rows: list[dict[str, Any]], row_key: str, col_key: str
) -> tuple[list[str], list[str], list[list[float | None]]]:
    """min of acc_mean over everything but (row_key, col_key)."""
    rkeys = sorted({str(r.get(row_key, "-")) for r in rows}, key=_natural)
    ckeys = sorted({str(r.get(col_key, "-")) for r in rows}, key=_natural)
    matrix: list[list[float | None]] = [[None] * len(ckeys) for _ in rkeys]
    for r in rows:
        i, j = rkeys.index(str(r.get(row_key, "-"))), ckeys.index(str(r.get(col_key, "-")))
        acc = r.get("acc_mean")
        if acc is not None:
            cur = matrix[i][j]
            matrix[i][j] = acc if cur is None else min(cur, acc)
    return rkeys, ckeys, matrix


def _natural(text: str) -> tuple[int, float | str]:
    try:
        return (0, float(text))
    except ValueError:
        return (1, text)
