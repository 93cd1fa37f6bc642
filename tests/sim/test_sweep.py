"""Sweeps: identical runs once, every cell's folder and figures, seeds with mean and std, worst-case heatmap."""

from __future__ import annotations

import csv
import json

import pytest

from phalanx.sim.config import SimConfig, from_mapping
from phalanx.sim.experiment import plan, run
from phalanx.sim.report import mean_std, read_run
from phalanx.sim.sweep import LocalPool, expand, run_key, sweep, worst_case, write_csv

BASE = {"dataset": "blobs", "nodes": 8, "rounds": 3, "topology": "regular:4", "eval_every": 1}


def strip(rows):
    return [{k: v for k, v in r.items() if not k.startswith("wall_time")} for r in rows]


@pytest.mark.parametrize(
    "change",
    [
        {"attack": "ipm", "attack_params": {"z": 3.0}},
        {"byzantine_placement": "hubs"},
        {"omniscient": False},
        {"crash_placement": "hubs", "crash_round": 2},
        {"straggler_slowdown": 9.0},
        {"partition_nodes": [0, 1]},
        {"byzantine_fraction": 0.05, "attack": "ipm"},  # 0.05 x 8 nodes rounds to no attacker
        {"crash_fraction": 0.05, "crash_placement": "hubs"},
    ],
)
def test_settings_with_nothing_to_act_on_share_the_key_and_the_run(change) -> None:
    base = SimConfig(**BASE)
    other = from_mapping({**base.to_dict(), **change, "name": "other"})
    assert run_key(base) == run_key(other)
    # the claim behind the key: the simulator really gives the same run
    assert strip(run(plan(base)).rows) == strip(run(plan(other)).rows)


@pytest.mark.parametrize(
    "change",
    [
        {"attack": "ipm"},
        {"byzantine_placement": "hubs"},
        {"seed": 1},
        {"rule": "median"},
    ],
)
def test_settings_that_act_give_another_key(change) -> None:
    with_attackers = SimConfig(**BASE, byzantine_fraction=0.25)
    assert run_key(with_attackers) != run_key(with_attackers.replace(**change))


def test_explicit_attackers_make_placement_idle_and_explicit_crashes_make_crash_placement_idle() -> None:
    base = SimConfig(**BASE, byzantine_nodes=(1, 2), crash_nodes=(3,), crash_round=1)
    other = base.replace(
        byzantine_placement="hubs", byzantine_fraction=0.5, crash_placement="hubs", crash_fraction=0.5
    )
    assert run_key(base) == run_key(other)
    assert strip(run(plan(base)).rows) == strip(run(plan(other)).rows)


def test_worst_case_heatmap_takes_the_worst_node_not_the_mean() -> None:
    runs = [
        {"rule": "median", "byzantine_fraction": 0.25, "acc_mean": 0.83, "acc_min": 0.20},
        {"rule": "median", "byzantine_fraction": 0.25, "acc_mean": 0.90, "acc_min": 0.85},
        {"rule": "median", "byzantine_fraction": 0.0, "acc_mean": 0.91, "acc_min": 0.88},
    ]
    rows, cols, matrix = worst_case(runs, "rule", "byzantine_fraction")
    assert (rows, cols) == (["median"], ["0.0", "0.25"])
    assert matrix == [[0.88, 0.20]]


def test_sweep_runs_identical_cells_once_and_gives_each_cell_its_folder(tmp_path) -> None:
    base = {**BASE, "rule": "trimmed-mean", "rule_params": {"f": 1}}
    points = expand(base, {"attack": ["alie", "ipm"], "byzantine_fraction": [0.0, 0.25]})
    calls = []
    result = sweep(points, pool=LocalPool(1), out=tmp_path, plots=True, on_done=lambda: calls.append(1))
    assert result.unique == 3 and len(calls) == 4  # ipm at 0 attackers is alie at 0 attackers
    assert [(r["attack"], r["byzantine_fraction"]) for r in result.rows] == [
        ("alie", 0.0),
        ("alie", 0.25),
        ("ipm", 0.0),
        ("ipm", 0.25),
    ]
    reused, first = read_run(tmp_path / "ipm_0.0"), read_run(tmp_path / "alie_0.0")
    assert reused.config["attack"] == "ipm" and reused.summary["same_run_as"] == "alie_0.0"
    assert strip(reused.rows) == strip(first.rows)
    for cell in ("alie_0.0", "alie_0.25", "ipm_0.0", "ipm_0.25"):
        assert (tmp_path / cell / "accuracy_vs_round.png").is_file()
        assert (tmp_path / cell / "consensus_vs_time.pdf").is_file()
        assert (tmp_path / cell / "topology.png").is_file()


def test_seeds_give_mean_and_std_columns_and_seed_folders(tmp_path) -> None:
    points = expand(BASE, {"topology": ["ring", "complete"]})
    result = sweep(points, pool=LocalPool(1), out=tmp_path, seeds=[0, 1, 2], plots=False)
    assert result.unique == 6
    write_csv(result.rows, tmp_path / "results.csv")
    with open(tmp_path / "results.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [r["topology"] for r in table] == ["ring", "complete"]
    assert {"seeds", "acc_mean", "acc_mean_std", "acc_min_std", "consensus_std"} <= set(table[0])
    assert "wall_time" not in table[0]  # the CSV holds nothing that changes from one run to the next
    for cell, row in zip(("ring", "complete"), result.rows):
        finals = [read_run(tmp_path / cell / f"seed-{s}").summary["acc_min"] for s in (0, 1, 2)]
        assert (row["acc_min"], row["acc_min_std"]) == mean_std(finals)
        group = json.loads((tmp_path / cell / "summary.json").read_text())
        assert group["seeds"] == [0, 1, 2] and group["acc_min"] == row["acc_min"]
    assert [(r["topology"], r["seed"]) for r in result.runs][:3] == [("ring", 0), ("ring", 1), ("ring", 2)]


@pytest.mark.slow
def test_process_pool_and_one_process_give_the_same_results(tmp_path) -> None:
    points = expand(BASE, {"byzantine_fraction": [0.0, 0.25]})
    a = sweep(points, pool=LocalPool(1), out=tmp_path / "a", seeds=[0, 1], plots=False)
    b = sweep(points, pool=LocalPool(2), out=tmp_path / "b", seeds=[0, 1], plots=False)
    assert a.rows == b.rows and a.runs == b.runs
    for path in sorted((tmp_path / "a").rglob("metrics.jsonl")):
        other = tmp_path / "b" / path.relative_to(tmp_path / "a")
        assert strip(read_run(path.parent).rows) == strip(read_run(other.parent).rows)
