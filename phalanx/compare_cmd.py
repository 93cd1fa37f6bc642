"""``phalanx compare RUN_DIR...``: one table and overlaid figures of several run folders.

A run folder is what ``phalanx sim``, ``phalanx net up`` or a sweep cell leaves (``config.toml``,
``metrics.jsonl``, ``summary.json``); a seed group's folder compares as its mean, with ± std bands.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

COLUMNS = (
    ("acc_mean", "acc mean", ".4f"),
    ("acc_min", "acc min", ".4f"),
    ("acc_avg", "acc avg model", ".4f"),
    ("loss_mean", "loss", ".4f"),
    ("consensus", "consensus", ".4f"),
    ("mb", "MB sent", ".1f"),
    ("rounds", "rounds", ""),
    ("virtual_time", "sim s", ".1f"),
)


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "compare", help="one table and overlaid plots (accuracy, loss, consensus) of several run folders"
    )
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders to compare")
    parser.add_argument(
        "--labels",
        default=None,
        metavar="A,B,...",
        help="one label per run for the table and legends (default: the folder names)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/compare"),
        help="folder for the figures, table.txt and compare.csv (default: runs/compare)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty output folder, replacing files of the same name (default: refuse)",
    )
    parser.add_argument("--no-plots", action="store_true", help="print the table only; write nothing")
    parser.set_defaults(func=run_compare)


def labels_for(paths: list[Path]) -> list[str]:
    """Folder names, or as much of each path as tells them apart (``a/seed-0``, ``b/seed-0``)."""
    for depth in range(1, max(len(p.parts) for p in paths) + 1):
        labels = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def differing(configs: list[dict[str, Any]]) -> list[str]:
    """The settings whose values are not the same in every config (the name aside)."""
    keys: dict[str, None] = {}
    for c in configs:
        keys.update(dict.fromkeys(c))
    return [k for k in keys if k != "name" and len({repr(c.get(k)) for c in configs}) > 1]


def run_compare(args: argparse.Namespace) -> int:
    from phalanx.sim.config import ConfigError
    from phalanx.sim.report import check_out_dir, read_run, summary_table

    folders = [read_run(path) for path in args.runs]
    labels = labels_for([p.resolve() for p in args.runs])
    if args.labels is not None:
        labels = [t.strip() for t in args.labels.split(",")]
        if len(labels) != len(folders):
            raise ConfigError(f"--labels gives {len(labels)} labels for {len(folders)} runs")
    if not args.no_plots:
        check_out_dir(args.out, overwrite=args.overwrite)
    diff = differing([f.config for f in folders])
    rows = []
    for label, folder in zip(labels, folders):
        info = dict(folder.summary)
        info["rounds"] = len(folder.rows)
        info.setdefault("virtual_time", next((r.get("virtual_time") for r in reversed(folder.rows)), None))
        seeds = info.get("seeds")
        info["seeds"] = len(seeds) if isinstance(seeds, list) else 1
        rows.append({**info, **{k: _show(folder.config.get(k)) for k in diff}, "name": label})
    present = [c for c in COLUMNS if any(r.get(c[0] if c[0] != "mb" else "bytes") is not None for r in rows)]
    columns = [("name", "run", ""), *((k, k, "") for k in diff), *present]
    if any(r["seeds"] > 1 for r in rows):
        columns.append(("seeds", "seeds", ""))
    text = summary_table(rows, columns)
    print(text)
    if args.no_plots:
        return 0
    from phalanx.sim.plots import plot_compare
    from phalanx.sim.sweep import write_csv

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.txt").write_text(text + "\n")
    keep = ["name", *diff, *(k for k, _, _ in present if k != "mb"), "bytes", "seeds"]
    write_csv([{k: r.get(k) for k in keep} for r in rows], args.out / "compare.csv")
    paths = plot_compare([(label, f.rows) for label, f in zip(labels, folders)], args.out)
    print(f"wrote {args.out}/ (table.txt, compare.csv and {len(paths)} figure files)")
    return 0


def _show(value: Any) -> Any:
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return value
