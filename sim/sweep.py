"""Grid sweeps: every combination of the grid's values applied to a base config, run on a pool of workers.

A grid maps config keys to lists of values; ``rule_params.f`` style keys set one entry of a table. Every
combination is checked (:func:`phalanx.sim.experiment.plan`) before any of them trains. Cells that would
repeat an identical run (:func:`run_key`: the same config once the settings that cannot matter are set
aside, e.g. the attack when there are no attackers) are run once; each cell still gets its own folder.

A run is a :class:`Job` that a worker turns into a :class:`JobResult`: the summary, the metrics rows and the
bytes of every file of its run folder, figures included. Workers write nothing themselves, so a pool of
local processes (:class:`LocalPool`) and a Ray cluster (:mod:`phalanx.sim.ray_pool`), where workers may sit
on other machines, leave the same files. With ``seeds`` every cell runs once per seed (``seed-N/`` in its
folder) and its folder holds the mean and standard deviation over seeds (:func:`phalanx.sim.report.write_seed_group`).

Results go to one CSV (one row per cell: the grid values and the run's summary; mean and ``_std`` columns
with several seeds) whose bytes depend only on the grid and the seeds, wall-clock times in a separate
``timings.csv``, and a heatmap of the worst honest accuracy (``acc_min``, the worst node's) over everything
else (attacks, topologies, seeds) per rule and Byzantine fraction.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import os
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol, TypeVar

from phalanx.sim.config import ConfigError, SimConfig, from_mapping

# The summary entries of a cell's CSV row. Wall-clock times are not among them: they go to timings.csv, so
# that the CSV of the same grid and seeds is the same file wherever and however it ran.
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
)
# Read where the summary has them (the averaged honest model's accuracy, once the simulator reports it).
OPTIONAL_KEYS = ("acc_avg",)

J = TypeVar("J")
R = TypeVar("R")


class Pool(Protocol):
    """Runs ``fn`` on every job somewhere and hands each result to ``on_done(index, result)`` in the
    calling thread, in any order."""

    def map(self, fn: Callable[[J], R], jobs: Sequence[J], on_done: Callable[[int, R], None]) -> None: ...


@dataclass(frozen=True, slots=True)
class LocalPool:
    """``workers`` local processes (spawned; one worker: in this process)."""

    workers: int

    def map(self, fn: Callable[[J], R], jobs: Sequence[J], on_done: Callable[[int, R], None]) -> None:
        if self.workers <= 1 or len(jobs) <= 1:
            for i, job in enumerate(jobs):
                on_done(i, fn(job))
            return
        with ProcessPoolExecutor(max_workers=self.workers, mp_context=get_context("spawn")) as pool:
            pending = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    on_done(pending.pop(future), future.result())

    @property
    def threads(self) -> int:
        """Torch threads per worker: the machine's cores shared among the workers."""
        return max(1, (os.cpu_count() or 1) // max(1, self.workers))


# ---- the grid ---------------------------------------------------------------------------------------------


def expand(base: dict[str, Any], grid: dict[str, Sequence[Any]]) -> list[tuple[dict[str, Any], SimConfig]]:
    """Every combination of the grid over ``base``: (the grid values, the config). Each config is named
    after its grid values (made unique with a suffix where two would share a name)."""
    keys = list(grid)
    for key in keys:
        if not grid[key]:
            raise ConfigError(f"sweep: no values for {key!r}")
    out = []
    names: set[str] = set()
    for combo in itertools.product(*(grid[k] for k in keys)):
        data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
        point = dict(zip(keys, combo))
        for key, value in point.items():
            table, dot, sub = key.partition(".")
            if dot:
                data[table] = {**data.get(table, {}), sub: value}
            else:
                data[key] = value
        name = "_".join(f"{str(v).replace('/', '-')}" for v in combo) or "run"
        unique, n = name, 1
        while unique in names:
            n += 1
            unique = f"{name}-{n}"
        names.add(unique)
        data["name"] = unique
        out.append((point, from_mapping(data)))
    return out


# Settings that cannot change a run, given the rest: (the setting, when it is idle). Only the run's name
# is ignored always. Each entry is safe only as long as the simulator never reads the setting in that case
# (tests/sim/test_sweep.py runs each pair to check it).
_IDLE: tuple[tuple[str, Callable[[SimConfig], bool]], ...] = (
    ("byzantine_fraction", lambda c: c.num_byzantine == 0 or bool(c.byzantine_nodes)),
    ("attack", lambda c: c.num_byzantine == 0),
    ("attack_params", lambda c: c.num_byzantine == 0),
    ("attacks", lambda c: c.num_byzantine == 0),
    ("byzantine_placement", lambda c: c.num_byzantine == 0 or bool(c.byzantine_nodes)),
    (
        "byzantine_target",
        lambda c: c.num_byzantine == 0 or bool(c.byzantine_nodes) or c.byzantine_placement != "target",
    ),
    ("omniscient", lambda c: c.num_byzantine == 0),
    ("crash_fraction", lambda c: c.num_crashed == 0 or bool(c.crash_nodes)),
    ("crash_placement", lambda c: c.num_crashed == 0 or bool(c.crash_nodes)),
    ("crash_round", lambda c: c.num_crashed == 0),
    ("crash_rounds", lambda c: c.num_crashed == 0),
    ("straggler_slowdown", lambda c: c.straggler_fraction == 0),
    ("partition_nodes", lambda c: not c.partition_rounds),
)


def run_key(config: SimConfig) -> str:
    """Two configs with the same key run the same simulation: the config without its name and without the
    settings that have nothing to act on (:data:`_IDLE`), as canonical JSON."""
    data = config.to_dict()
    data.pop("name", None)
    for key, idle in _IDLE:
        if key in data and idle(config):
            data.pop(key)
    return json.dumps(data, sort_keys=True, default=str)


# ---- jobs: what a worker runs ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    config: dict[str, Any]  # SimConfig.to_dict()
    plots: bool = True
    threads: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class JobResult:
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    files: dict[str, bytes]  # the run folder: file name -> contents
    host: str = ""
    seconds: float = 0.0


def _folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def run_job(job: Job) -> JobResult:
    """Run one simulation and return its run folder's files (written to a scratch folder and read back)."""
    import torch

    from phalanx.sim.experiment import plan, run
    from phalanx.sim.report import write_run

    start = time.perf_counter()
    torch.set_num_threads(job.threads)
    config = from_mapping(job.config)
    result = run(plan(config))
    with tempfile.TemporaryDirectory(prefix="phalanx-run-") as tmp:
        info = write_run(result, Path(tmp), plots=job.plots)
        files = _folder_files(Path(tmp))
    return JobResult(
        summary=info,
        rows=result.rows,
        files=files,
        host=socket.gethostname(),
        seconds=time.perf_counter() - start,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class PlotJob:
    rows: list[dict[str, Any]]
    title: str


def plot_job(job: PlotJob) -> dict[str, bytes]:
    """The figures of a seed group's aggregated rows, as file name -> contents."""
    from phalanx.sim.plots import plot_rows

    with tempfile.TemporaryDirectory(prefix="phalanx-plots-") as tmp:
        plot_rows(job.rows, Path(tmp), job.title)
        return _folder_files(Path(tmp))


# ---- the sweep --------------------------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class SweepResult:
    rows: list[dict[str, Any]]  # one per cell, in grid order (means and _std columns with several seeds)
    runs: list[dict[str, Any]]  # one per cell and seed: the grid values, the seed and the run's summary
    unique: int = 0  # simulations actually run
    timings: list[dict[str, Any]] = field(default_factory=list)


def _pick(info: dict[str, Any], *, std: bool) -> dict[str, Any]:
    out = {}
    for key in (*SUMMARY_KEYS, *(k for k in OPTIONAL_KEYS if k in info)):
        out[key] = info.get(key)
        if std:
            out[f"{key}_std"] = info.get(f"{key}_std")
    return out


def sweep(
    points: list[tuple[dict[str, Any], SimConfig]],
    *,
    pool: Pool,
    out: Path | None,
    seeds: Sequence[int] = (),
    plots: bool = True,
    threads: int = 1,
    keys: Sequence[str] = (),
    on_done: Callable[[], None] | None = None,
) -> SweepResult:
    """Run every point (once per seed of ``seeds``; with none, once with its own seed) on ``pool``.

    Identical runs are run once (:func:`run_key`). With ``out``, cell ``c`` is written to ``out/c`` (and
    ``out/c/seed-N`` with seeds). ``keys`` are settings copied from each cell's config into its
    :attr:`SweepResult.runs` entries (the heatmap's axes, when the grid does not vary them). ``on_done`` is
    called once per (cell, seed) as its run is done (for a progress bar)."""
    from phalanx.sim.experiment import plan
    from phalanx.sim.report import aggregate_rows, aggregate_summaries, seed_dir, to_toml, write_seed_group

    runs_of: list[list[tuple[int, SimConfig]]] = []
    for _, config in points:
        if seeds:
            runs_of.append([(s, config if s == config.seed else config.replace(seed=s)) for s in seeds])
        else:
            runs_of.append([(config.seed, config)])
    for cell in runs_of:
        for _, config in cell:
            plan(config)  # every bad combination fails here, before anything trains
    index: dict[str, int] = {}
    owners: list[list[tuple[int, int]]] = []  # job -> the (cell, seed position) pairs it serves
    jobs: list[Job] = []
    for c, cell in enumerate(runs_of):
        for k, (_, config) in enumerate(cell):
            key = run_key(config)
            if key not in index:
                index[key] = len(jobs)
                jobs.append(Job(config=config.to_dict(), plots=plots and out is not None, threads=threads))
                owners.append([])
            owners[index[key]].append((c, k))
    results: list[JobResult | None] = [None] * len(jobs)

    def folder(c: int, k: int) -> Path:
        assert out is not None
        base = out / points[c][1].name
        return seed_dir(base, runs_of[c][k][0]) if seeds else base

    def done(i: int, result: JobResult) -> None:
        results[i] = dataclasses.replace(result, files={})  # written below; figures weigh MBs per run
        if out is not None:
            first = jobs[i].config["name"]
            for c, k in owners[i]:
                config = runs_of[c][k][1]
                _write_files(folder(c, k), result, config, to_toml(config), same_as=first)
        for _ in owners[i]:
            if on_done:
                on_done()

    pool.map(run_job, jobs, done)

    def result_of(c: int, k: int) -> JobResult:
        r = results[index[run_key(runs_of[c][k][1])]]
        assert r is not None
        return r

    rows, per_run, plot_jobs, plot_dirs = [], [], [], []
    for c, (point, config) in enumerate(points):
        cell = runs_of[c]
        summaries = [{**result_of(c, k).summary, "name": config.name} for k in range(len(cell))]
        for (seed, _), info in zip(cell, summaries):
            fixed = {k: setting(config, k) for k in keys if k not in point}
            per_run.append({**fixed, **point, "seed": seed, **_pick(info, std=False)})
        if not seeds:
            rows.append({**point, **_pick(summaries[0], std=False)})
            continue
        rows.append({**point, "seeds": len(cell), **_pick(aggregate_summaries(summaries, seeds), std=True)})
        if out is not None:
            group = [(s, info, result_of(c, k).rows) for k, ((s, _), info) in enumerate(zip(cell, summaries))]
            write_seed_group(out / config.name, group, config_toml=to_toml(cell[0][1]), plots=False)
            if plots:
                title = f"{config.name} ({len(seeds)} seeds: mean ± std)"
                plot_jobs.append(PlotJob(rows=aggregate_rows([g[2] for g in group]), title=title))
                plot_dirs.append(out / config.name)

    def plotted(j: int, files: dict[str, bytes]) -> None:
        for name, data in files.items():
            (plot_dirs[j] / name).write_bytes(data)

    if plot_jobs:
        pool.map(plot_job, plot_jobs, plotted)
    timings = []
    for i, r in enumerate(results):
        assert r is not None
        config_of = jobs[i].config
        timings.append(
            {
                "run": config_of["name"],
                "seed": config_of["seed"],
                "host": r.host,
                "seconds": round(r.seconds, 3),
            }
        )
    return SweepResult(rows=rows, runs=per_run, unique=len(jobs), timings=timings)


def setting(config: SimConfig, key: str) -> Any:
    """A config's value of ``key`` (``table.entry`` reads one entry of a table; None where absent)."""
    data = config.to_dict()
    table, dot, sub = key.partition(".")
    if dot:
        value = data.get(table)
        return value.get(sub) if isinstance(value, dict) else None
    return data.get(key)


def _write_files(path: Path, result: JobResult, config: SimConfig, config_toml: str, *, same_as: str) -> None:
    """A cell's run folder from a job's files; a cell served by another cell's run gets its own config.toml
    and a summary with its own name and ``same_run_as``."""
    path.mkdir(parents=True, exist_ok=True)
    for name, data in result.files.items():
        (path / name).write_bytes(data)
    if config.name != same_as:
        (path / "config.toml").write_text(config_toml)
        info = {**result.summary, "name": config.name, "same_run_as": same_as}
        (path / "summary.json").write_text(json.dumps(info, indent=2) + "\n")


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(keys))
        writer.writeheader()
        writer.writerows(rows)


def worst_case(
    runs: list[dict[str, Any]], row_key: str, col_key: str, *, metric: str = "acc_min"
) -> tuple[list[str], list[str], list[list[float | None]]]:
    """For each (row_key, col_key) value pair, the minimum of ``metric`` over every run with those values
    (everything else: attacks, topologies, seeds). ``acc_min`` is the worst honest node's accuracy."""
    rkeys = sorted({str(r.get(row_key, "-")) for r in runs}, key=_natural)
    ckeys = sorted({str(r.get(col_key, "-")) for r in runs}, key=_natural)
    matrix: list[list[float | None]] = [[None] * len(ckeys) for _ in rkeys]
    for r in runs:
        i, j = rkeys.index(str(r.get(row_key, "-"))), ckeys.index(str(r.get(col_key, "-")))
        value = r.get(metric)
        if value is not None:
            cur = matrix[i][j]
            matrix[i][j] = value if cur is None else min(cur, value)
    return rkeys, ckeys, matrix


def _natural(text: str) -> tuple[int, float | str]:
    try:
        return (0, float(text))
    except ValueError:
        return (1, text)
