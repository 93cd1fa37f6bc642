"""What a run leaves behind: ``config.toml`` (resolved), ``metrics.jsonl``, ``summary.json``, a summary table,
and PNG plots (accuracy vs round, accuracy vs bytes, the topology with Byzantine and crashed nodes coloured)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from phalanx.sim.config import SimConfig
    from phalanx.sim.experiment import Result


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "inf" if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def to_toml(config: SimConfig) -> str:
    """The config as TOML that :func:`phalanx.sim.config.from_mapping` reads back to an equal config."""
    data = config.to_dict()
    lines, tables = [], []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif value == "inf":
            lines.append(f"{key} = inf")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for key, table in tables:
        lines.append(f"\n[{key}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


def summary(result: Result) -> dict[str, Any]:
    rows = result.rows
    last_eval: dict[str, Any] = next((r for r in reversed(rows) if r.get("acc_mean") is not None), {})
    plan = result.plan
    return {
        "name": plan.config.name,
        "rounds": len(rows),
        "acc_mean": last_eval.get("acc_mean"),
        "acc_min": last_eval.get("acc_min"),
        "acc_max": last_eval.get("acc_max"),
        "loss_mean": last_eval.get("loss_mean"),
        "consensus": rows[-1]["consensus"] if rows else None,
        "bytes": rows[-1]["bytes"] if rows else 0,
        "messages": rows[-1]["messages"] if rows else 0,
        "live": rows[-1]["live"] if rows else 0,
        "spectral_gap": plan.spectral_gap,
        "byzantine": sorted(plan.byzantine),
        "crashed": sorted(result.crashed_ids),
        "wall_time": round(result.wall_time, 3),
        **result.engine_stats,
    }


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A plain-text table; ``columns`` are (key, header, format)."""

    def cell(row: dict[str, Any], key: str, fmt: str) -> str:
        value = row.get(key)
        if value is None:
            return "-"
        return format(value, fmt) if fmt else str(value)

    body = [[cell(r, k, f) for k, _, f in columns] for r in rows]
    heads = [h for _, h, _ in columns]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(heads)]
    out = ["  ".join(h.rjust(w) for h, w in zip(heads, widths))]
    out.append("  ".join("-" * w for w in widths))
    out.extend("  ".join(c.rjust(w) for c, w in zip(b, widths)) for b in body)
    return "\n".join(out)


SUMMARY_COLUMNS = (
    ("name", "run", ""),
    ("acc_mean", "acc mean", ".4f"),
    ("acc_min", "acc min", ".4f"),
    ("acc_max", "acc max", ".4f"),
    ("consensus", "consensus", ".4f"),
    ("bytes", "MB sent", ""),
    ("live", "live", ""),
    ("wall_time", "wall s", ".1f"),
)


def summary_table(summaries: Sequence[dict[str, Any]]) -> str:
    rows = [{**s, "bytes": f"{s['bytes'] / 1e6:.1f}"} for s in summaries]
    return table(rows, SUMMARY_COLUMNS)


def write_run(result: Result, out: Path, *, plots: bool = True) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.toml").write_text(to_toml(result.plan.config))
    with open(out / "metrics.jsonl", "w") as fh:
        for row in result.rows:
            fh.write(json.dumps(row) + "\n")
    info = summary(result)
    (out / "summary.json").write_text(json.dumps(info, indent=2) + "\n")
    if plots:
        from phalanx.sim.plots import plot_run

        plot_run(result, out)
    return info
