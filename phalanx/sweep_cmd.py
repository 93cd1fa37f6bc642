"""``phalanx sweep``: a grid of simulations (e.g. rules x attacks x Byzantine fraction x topology) in parallel."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from phalanx.cli import positive_int
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
    parser.add_argument("--workers", type=positive_int, default=2, help="parallel processes (default: 2)")
    parser.add_argument(
        "--out", type=Path, default=Path("runs/sweep"), help="output folder (default: runs/sweep)"
    )
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
    from tqdm import tqdm

    from phalanx.sim.plots import heatmap
    from phalanx.sim.report import table as text_table
    from phalanx.sim.sweep import expand, sweep, worst_case, write_csv

    points = expand(base, grid)
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"sweep: {len(points)} runs over {', '.join(grid) or 'nothing'} with {args.workers} workers",
        flush=True,
    )
    with tqdm(total=len(points), unit="run", file=sys.stderr, leave=False) as bar:
        rows = sweep(points, workers=args.workers, out=args.out / "runs", on_done=lambda _: bar.update(1))
    write_csv(rows, args.out / "results.csv")
    cols = [(k, k, "") for k in grid] + [
        ("acc_mean", "acc mean", ".4f"),
        ("acc_min", "acc min", ".4f"),
        ("consensus", "consensus", ".4f"),
    ]
    print(text_table(rows, cols))
    rkeys, ckeys, matrix = worst_case(rows, args.heatmap_rows, args.heatmap_cols)
    heatmap(
        matrix,
        rkeys,
        ckeys,
        f"worst-case honest accuracy ({args.heatmap_rows} x {args.heatmap_cols})",
        args.out / "heatmap.png",
    )
    print(f"wrote {args.out}/results.csv and heatmap.png")
    return 0
