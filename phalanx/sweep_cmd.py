"""``phalanx sweep``: a grid of simulations (e.g. rules x attacks x Byzantine fraction x topology) in parallel."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from phalanx.cli import positive_int, seed_list, seeds_setting
from phalanx.sim_cmd import add_config_arguments


def _grid_entry(text: str) -> tuple[str, str]:
    key, sep, values = text.partition("=")
    if not sep or not key or not values:
        raise argparse.ArgumentTypeError(f"expected KEY=V1,V2,..., got {text!r}")
    return key.strip(), values


def register(sub: Any) -> None:
    parser = sub.add_parser("sweep", help="run a grid of simulations in parallel; one CSV and a heatmap")
    add_config_arguments(parser)
    parser.add_argument(
        "--grid",
        type=_grid_entry,
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a config key and its values (repeatable); rule_params.f=1,2 sets a rule parameter; "
        "a [sweep] table in the config file does the same",
    )
    parser.add_argument(
        "--workers", type=positive_int, default=2, help="parallel local processes (default: 2)"
    )
    parser.add_argument(
        "--seeds",
        type=seed_list,
        default=None,
        metavar="S1,S2,...",
        help="run every cell once per seed and report the mean and standard deviation "
        "(a top-level 'seeds = [...]' in the config file does the same)",
    )
    parser.add_argument(
        "--ray",
        metavar="ADDRESS",
        default=None,
        help="run the cells on a Ray cluster instead of local processes: auto (the cluster 'ray start' runs "
        "here), HOST:PORT of its head, ray://HOST:10001, or local (a throwaway cluster of --workers CPUs); "
        "needs the extra phalanx[ray]",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/sweep"), help="output folder (default: runs/sweep)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty output folder, replacing files of the same name (default: refuse)",
    )
    parser.add_argument("--no-plots", action="store_true", help="no figures in the cells' run folders")
    parser.add_argument(
        "--heatmap-rows", default="rule", help="config key for the heatmap rows (default: rule)"
    )
    parser.add_argument(
        "--heatmap-cols",
        default="byzantine_fraction",
        help="config key for the heatmap columns (default: byzantine_fraction)",
    )
    parser.set_defaults(func=run_sweep)


def run_sweep(args: argparse.Namespace) -> int:
    from phalanx.sim.config import FIELDS, ConfigError, parse_value
    from phalanx.sim_cmd import settings_from_args

    # Only flags actually given override the preset and the file (tables merge key by key).
    base = settings_from_args(args)
    table = base.pop("sweep", {})
    seeds = args.seeds or (seeds_setting(base.pop("seeds")) if "seeds" in base else [])
    base.pop("seeds", None)
    if not isinstance(table, dict):
        raise ConfigError("[sweep] must be a table of key = [values]")
    grid: dict[str, list[Any]] = {}
    for key, values in table.items():
        grid[key] = list(values) if isinstance(values, list) else [values]
    for key, values in args.grid:
        grid[key] = [parse_value(v) for v in values.split(",")]
    for key in grid:
        if key.partition(".")[0] not in FIELDS:
            raise ConfigError(f"sweep: unknown setting {key!r}")
    if seeds and "seed" in grid:
        raise ConfigError("sweep: seeds and a grid over seed both set the seed; use one of them")
    from phalanx.sim.report import check_out_dir
    from phalanx.sim.sweep import expand

    points = expand(base, grid)
    check_out_dir(args.out, overwrite=args.overwrite)
    if args.ray is None:
        from phalanx.sim.sweep import LocalPool

        local = LocalPool(args.workers)
        return _run(args, points, grid, seeds, local, local.threads, f"{args.workers} local workers")
    from phalanx.sim.ray_pool import RayPool

    with RayPool(args.ray, workers=args.workers) as ray_pool:
        where = f"Ray at {args.ray} ({ray_pool.cpus()} CPUs)"
        return _run(args, points, grid, seeds, ray_pool, 1, where)


def _run(
    args: argparse.Namespace,
    points: list[Any],
    grid: dict[str, list[Any]],
    seeds: list[int],
    pool: Any,
    threads: int,
    where: str,
) -> int:
    from tqdm import tqdm

    from phalanx.sim.plots import heatmap
    from phalanx.sim.report import table as text_table
    from phalanx.sim.sweep import sweep, worst_case, write_csv

    per_cell = f" x {len(seeds)} seeds" if seeds else ""
    print(
        f"sweep: {len(points)} cells{per_cell} over {', '.join(grid) or 'nothing'} on {where}",
        flush=True,
    )
    total = len(points) * max(1, len(seeds))
    with tqdm(total=total, unit="run", file=sys.stderr, leave=False) as bar:
        result = sweep(
            points,
            pool=pool,
            out=args.out / "runs",
            seeds=seeds,
            plots=not args.no_plots,
            threads=threads,
            keys=(args.heatmap_rows, args.heatmap_cols),
            on_done=lambda: bar.update(1),
        )
    if result.unique < total:
        print(f"ran {result.unique} distinct simulations for {total} runs (identical runs reused)")
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(result.rows, args.out / "results.csv")
    write_csv(result.timings, args.out / "timings.csv")
    cols = [(k, k, "") for k in grid] + [
        ("acc_mean", "acc mean", ".4f"),
        ("acc_min", "acc min", ".4f"),
        ("consensus", "consensus", ".4f"),
    ]
    print(text_table(result.rows, cols))
    rkeys, ckeys, matrix = worst_case(result.runs, args.heatmap_rows, args.heatmap_cols)
    over = "nodes, seeds" if seeds else "nodes"
    heatmap(
        matrix,
        rkeys,
        ckeys,
        f"worst honest accuracy (min over {over} and other settings): {args.heatmap_rows} x {args.heatmap_cols}",
        args.out / "heatmap",
    )
    print(f"wrote {args.out}/results.csv, timings.csv, heatmap.png, heatmap.pdf and runs/")
    return 0
