"""What a run leaves behind, and reading it back.

A run folder holds ``config.toml`` (resolved), ``metrics.jsonl`` (one row per round), ``summary.json``,
``nodes.jsonl`` (one row per honest node after the run: :meth:`phalanx.sim.metrics.Metrics.node_rows`) and its
figures (:mod:`phalanx.sim.plots`). A run repeated over seeds keeps each seed's run folder in ``seed-N/`` and
writes, in its own folder, the same three files with the mean over seeds under each metric's key and the
sample standard deviation under ``KEY_std`` (:func:`aggregate_rows`, :func:`aggregate_summaries`,
:func:`write_seed_group`), so every reader of a run folder (plots, ``phalanx compare``) reads both kinds.

Folders are never written over silently: :func:`check_out_dir` refuses a non-empty one unless told to
overwrite.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phalanx.sim.config import ConfigError

if TYPE_CHECKING:
    from phalanx.sim.config import SimConfig
    from phalanx.sim.experiment import Result

RUN_FILES = ("config.toml", "metrics.jsonl", "summary.json")


def check_out_dir(path: Path, *, overwrite: bool) -> None:
    """Refuse to write into ``path`` when it is a file, or a folder that is not empty, unless ``overwrite``.

    With ``overwrite`` the files a run writes replace those of the same name; nothing else is deleted.

    Raises:
        ConfigError: one line naming the folder and the way out.
    """
    if not path.exists():
        return
    if not path.is_dir():
        raise ConfigError(f"output {path} exists and is not a folder")
    if overwrite:
        return
    entries = sorted(p.name for p in path.iterdir())
    if entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise ConfigError(
            f"output folder {path} is not empty ({shown}); pass --overwrite to write over it, "
            "or choose another --out"
        )


def numbered(path: Path) -> Path:
    """``path`` if it is absent or an empty folder, else the first of ``path-2``, ``path-3``, ... that is: for
    default output folders (``runs/NAME``), so that a second run never lands on the first."""
    candidate, n = path, 1
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


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
        "acc_avg": last_eval.get("acc_avg"),
        "loss_mean": last_eval.get("loss_mean"),
        "loss_avg": last_eval.get("loss_avg"),
        "consensus": rows[-1]["consensus"] if rows else None,
        "bytes": rows[-1]["bytes"] if rows else 0,
        "messages": rows[-1]["messages"] if rows else 0,
        "live": rows[-1]["live"] if rows else 0,
        "spectral_gap": plan.spectral_gap,
        "byzantine": sorted(plan.byzantine),
        "crashed": sorted(result.crashed_ids),
        "crashed_degrees": {str(i): int(plan.graph.degree[i]) for i in sorted(result.crashed_ids)},
        "wall_time": round(result.wall_time, 3),
        **result.engine_stats,
        **(plan.features.record() if plan.features is not None else {}),  # --train-only head's frozen part
        # differential privacy (issue 18): the worst honest node's (epsilon, delta) at the end
        **(
            {"dp_epsilon": rows[-1]["dp_epsilon"], "dp_delta": rows[-1]["dp_delta"]}
            if rows and "dp_epsilon" in rows[-1]
            else {}
        ),
    }


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    text = format(value, fmt) if fmt else str(value)
    std = row.get(f"{key}_std")
    if fmt and isinstance(std, int | float) and not isinstance(std, bool):
        text += f" ± {format(std, fmt)}"
    return text


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A plain-text table; ``columns`` are (key, header, format). A formatted value whose row also holds
    ``KEY_std`` (a seed group) reads ``mean ± std``."""
    body = [[_cell(r, k, f) for k, _, f in columns] for r in rows]
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
    ("mb", "MB sent", ".1f"),
    ("live", "live", ""),
    ("wall_time", "wall s", ".1f"),
)


def _megabytes(s: dict[str, Any]) -> dict[str, Any]:
    out = {**s, "mb": s["bytes"] / 1e6 if isinstance(s.get("bytes"), int | float) else None}
    if isinstance(s.get("bytes_std"), int | float):
        out["mb_std"] = s["bytes_std"] / 1e6
    return out


def summary_table(
    summaries: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]] = SUMMARY_COLUMNS
) -> str:
    return table([_megabytes(s) for s in summaries], columns)


def write_rows(rows: Iterable[dict[str, Any]], path: Path) -> None:
    with open(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def write_run(result: Result, out: Path, *, plots: bool = True) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.toml").write_text(to_toml(result.plan.config))
    write_rows(result.rows, out / "metrics.jsonl")
    info = summary(result)
    (out / "summary.json").write_text(json.dumps(info, indent=2) + "\n")
    if result.nodes:  # a simulated run's (net up writes its own nodes.json)
        write_rows(result.nodes, out / "nodes.jsonl")
    if plots:
        from phalanx.sim.plots import plot_run

        plot_run(result, out)
    return info


# ---- reading run folders back ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFolder:
    """A run folder as read back: its config (plain TOML values), metrics rows and summary."""

    path: Path
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    summary: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.summary.get("name") or self.config.get("name") or self.path.name)


def read_run(path: Path) -> RunFolder:
    """Read ``config.toml``, ``metrics.jsonl`` and ``summary.json`` of a run folder (plain TOML and JSON only).

    Raises:
        ConfigError: one line naming the folder or file and what is wrong with it.
    """
    import tomllib

    if not path.is_dir():
        raise ConfigError(f"{path} is not a run folder (no such folder)")
    missing = [f for f in RUN_FILES if not (path / f).is_file()]
    if missing:
        raise ConfigError(f"{path} is not a run folder: it lacks {', '.join(missing)}")
    try:
        config = tomllib.loads((path / "config.toml").read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path / 'config.toml'} is not valid TOML: {exc}".splitlines()[0]) from None
    rows: list[dict[str, Any]] = []
    try:
        with open(path / "metrics.jsonl", encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if not isinstance(row, dict) or type(row.get("round")) is not int:
                    raise ConfigError(
                        f"{path / 'metrics.jsonl'} line {number}: not a metrics row with a round"
                    )
                rows.append(row)
        info = json.loads((path / "summary.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{path}: a metrics or summary file is not valid JSON: {exc}".splitlines()[0]
        ) from None
    if not isinstance(info, dict):
        raise ConfigError(f"{path / 'summary.json'} is not a JSON object")
    return RunFolder(path=path, config=config, rows=rows, summary=info)


# ---- seeds: mean and standard deviation ------------------------------------------------------------------


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (n - 1 in the denominator; 0 for one value)."""
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def _aggregate(records: Sequence[dict[str, Any]], skip: frozenset[str]) -> dict[str, Any]:
    """Every numeric key of the records: its mean over the records that hold a number there, and ``KEY_std``.

    A key that is None (or NaN) in every record stays None; keys that are not numbers are left out."""
    out: dict[str, Any] = {}
    keys: dict[str, None] = {}
    for r in records:
        keys.update(dict.fromkeys(r))
    for key in keys:
        if key in skip or key.endswith("_std"):
            continue
        raw = [r.get(key) for r in records]
        if any(v is not None and not _numeric(v) for v in raw):
            continue  # text, lists, tables: not averaged
        values = [v for v in (_number(x) for x in raw) if v is not None]
        if not values:
            out[key] = None
            continue
        mean, std = mean_std(values)
        if all(isinstance(x, int) for x in raw if x is not None) and mean == int(mean):
            out[key] = int(mean)
        else:
            out[key] = mean
        out[f"{key}_std"] = std
    return out


def aggregate_rows(per_seed: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rows of several seeds of one run folded into one row per round: ``KEY`` (mean over the seeds that
    reached the round and hold a number) and ``KEY_std`` (sample standard deviation), plus ``seeds``, the
    number of seeds in the round. Keys whose values are not numbers (tables such as counters) are left out."""
    by_round: dict[int, list[dict[str, Any]]] = {}
    for rows in per_seed:
        for row in rows:
            by_round.setdefault(int(row["round"]), []).append(row)
    out = []
    for r in sorted(by_round):
        records = by_round[r]
        out.append({"round": r, "seeds": len(records), **_aggregate(records, frozenset({"round"}))})
    return out


def aggregate_summaries(summaries: Sequence[dict[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """One summary for a run repeated over ``seeds``: the mean and ``KEY_std`` of every numeric entry, the
    seeds, and each seed's own summary under ``runs``."""
    skip = frozenset({"seed"})
    return {
        "name": summaries[0].get("name"),
        "seeds": list(seeds),
        **_aggregate(summaries, skip),
        "runs": [{"seed": s, **info} for s, info in zip(seeds, summaries)],
    }


def write_seed_group(
    out: Path,
    runs: Sequence[tuple[int, dict[str, Any], Sequence[dict[str, Any]]]],
    *,
    config_toml: str,
    plots: bool = True,
) -> dict[str, Any]:
    """Write the aggregate of ``runs`` = (seed, summary, rows) into ``out``: ``metrics.jsonl`` (mean and std
    per round), ``summary.json`` (:func:`aggregate_summaries`), ``config.toml`` (``config_toml``: the first
    seed's) and, with ``plots``, the figures with ± std bands. Returns the summary."""
    seeds = [s for s, _, _ in runs]
    rows = aggregate_rows([r for _, _, r in runs])
    info = aggregate_summaries([i for _, i, _ in runs], seeds)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.toml").write_text(config_toml)
    write_rows(rows, out / "metrics.jsonl")
    (out / "summary.json").write_text(json.dumps(info, indent=2) + "\n")
    if plots:
        from phalanx.sim.plots import plot_rows

        plot_rows(rows, out, f"{info['name']} ({len(seeds)} seeds: mean ± std)")
    return info


def seed_dir(out: Path, seed: int) -> Path:
    """Where seed ``seed`` of a run repeated over seeds keeps its own run folder."""
    return out / f"seed-{seed}"


def write_seed_dirs(out: Path, seeds: Sequence[int], *, plots: bool = True) -> dict[str, Any]:
    """Aggregate the run folders ``out/seed-N`` (written by :func:`write_run`) into ``out``; see
    :func:`write_seed_group`. For ``phalanx sim --seeds``: run and write each seed, then call this."""
    folders = [read_run(seed_dir(out, s)) for s in seeds]
    return write_seed_group(
        out,
        [(s, f.summary, f.rows) for s, f in zip(seeds, folders)],
        config_toml=(folders[0].path / "config.toml").read_text(),
        plots=plots,
    )
