"""Scenarios as a paper states them: faults at the round boundary named, crash fractions of the honest nodes,
data-less relays under IID, crash placements that cannot be honoured, the averaged model's accuracy and
per-node metrics."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from phalanx.node.partition import PartitionError, parse_partition, partition, relay_nodes
from phalanx.sim.config import ConfigError, SimConfig, from_mapping, load_preset
from phalanx.sim.experiment import plan, run
from phalanx.sim.metrics import Metrics

BASE = {"dataset": "blobs", "nodes": 12, "rounds": 6, "topology": "regular:4", "eval_every": 2}


def go(**kw):
    return run(plan(SimConfig(**{**BASE, **kw})))


def test_a_crash_at_round_r_keeps_the_node_in_round_r_minus_1_and_live_counts_honest_nodes() -> None:
    res = go(crash_nodes=(2, 3), crash_round=3, byzantine_nodes=(5,), attack="silent")
    by_round = {r["round"]: r for r in res.rows}
    for r in range(3):  # 11 honest nodes, the Byzantine one never counted
        assert (by_round[r]["honest_reported"], by_round[r]["live"]) == (11, 11), r
    for r in range(3, 6):
        assert (by_round[r]["honest_reported"], by_round[r]["live"]) == (9, 9), r
    assert res.crashed_ids == {2, 3}
    nodes = {n["node"]: n for n in res.nodes}
    assert nodes[2]["rounds"] == 3 and nodes[2]["last_round"] == 2 and not nodes[2]["alive"]
    assert nodes[0]["rounds"] == 6 and nodes[0]["alive"] and 5 not in nodes


def test_a_crash_at_round_0_happens_before_anything() -> None:
    res = go(crash_nodes=(1,), crash_round=0)
    assert all(r["honest_reported"] == 11 and r["live"] == 11 for r in res.rows)
    assert {n["node"]: n["rounds"] for n in res.nodes}[1] == 0


def test_churn_leaves_also_wait_for_the_node_s_own_boundary() -> None:
    """A node that leaves at round r completes round r - 1 first (and nothing of round r)."""
    res = go(nodes=16, rounds=8, topology="regular:6", eval_every=4, churn_leave=0.1)
    leaves = [(r, int(node)) for r, event, node in res.faults if event == "leave"]
    assert len(leaves) >= 5 and all(r >= 1 for r, _ in leaves)
    last = {n["node"]: n["last_round"] for n in res.nodes}
    assert all(last[node] == r - 1 for r, node in leaves)
    assert all(r["honest_reported"] == r["live"] for r in res.rows)


def test_crash_fraction_is_a_fraction_of_the_honest_nodes() -> None:
    cfg = dict(BASE, nodes=32, topology="regular:6", byzantine_fraction=0.25, attack="silent")
    assert len(plan(SimConfig(**cfg, crash_fraction=0.25)).crashed) == 6  # of 24 honest, not 8 of 32
    assert len(plan(SimConfig(**cfg, crash_fraction=0.2)).crashed) == 5  # round(4.8)
    demo = plan(from_mapping(load_preset("demo-alie")))
    assert len(demo.byzantine) == 8 and len(demo.crashed) == 6  # the README's "6 of the 24 honest"


def test_iid_with_relays_gives_a_seeded_fraction_no_data_and_splits_the_rest_iid() -> None:
    labels = np.arange(1000) % 10
    shards = partition(labels, 20, "iid:relays=0.2", seed=3)
    empty = [i for i, s in enumerate(shards) if len(s) == 0]
    assert empty == relay_nodes(20, 0.2, seed=3) and len(empty) == 4
    assert empty != relay_nodes(20, 0.2, seed=4)
    assert sorted(np.concatenate(shards).tolist()) == list(range(1000))
    assert {len(s) for s in shards if len(s)} <= {62, 63}
    assert parse_partition("iid:relays=0.2") == ("iid", 0.2)
    assert (
        partition(labels, 20, "iid:relays=0", seed=3)[0].tolist()
        == partition(labels, 20, "iid", seed=3)[0].tolist()
    )
    for bad in ("iid:relays=1", "iid:relays=x", "iid:relays=-0.1", "iid:foo"):
        with pytest.raises(PartitionError):
            parse_partition(bad)


def test_relay_placement_crashes_relays_and_refuses_when_there_are_none() -> None:
    p = plan(SimConfig(**BASE, partition="iid:relays=0.25", crash_fraction=0.25, crash_placement="relays"))
    assert sorted(p.crashed) == relay_nodes(12, 0.25, seed=0)
    assert all(len(p.shards[i]) == 0 for i in p.crashed)
    with pytest.raises(ConfigError, match=r"relays needs 3 honest nodes without data.*leaves 0"):
        plan(SimConfig(**BASE, crash_fraction=0.25, crash_placement="relays"))


def test_data_placement_breaks_iid_ties_by_seed_not_by_id() -> None:
    """Under IID every shard holds the same data (up to one sample): ``data`` must not fall back to ids
    0..k-1, which on a Barabasi-Albert graph are the hubs."""
    k = 4
    picks = [
        plan(
            SimConfig(
                **{**BASE, "nodes": 20, "seed": seed, "topology": "barabasi-albert:2"},
                crash_fraction=0.2,
                crash_placement="data",
            )
        ).crashed
        for seed in range(4)
    ]
    assert all(len(c) == k for c in picks)
    assert tuple(range(k)) not in picks
    assert len(set(picks)) > 1


def test_acc_avg_is_the_accuracy_of_the_honest_models_average() -> None:
    nodes = [str(i) for i in range(5)]
    engine = SimpleNamespace(alive=set(nodes), alive_version=0, bytes_sent=0, messages_sent=0, protocols={})
    metrics = Metrics(
        honest=nodes,
        eval_nodes=frozenset(nodes[:2]),  # a subset evaluated; the average is over every honest report
        rounds=2,
        eval_every=1,
        evaluate=lambda p: (float(p.sum()), float(p[0])),
        start=0.0,
    )
    metrics.engine = engine  # type: ignore[assignment]
    gen = torch.Generator().manual_seed(1)
    models = {n: 3.0 + torch.randn(7, generator=gen) for n in nodes}
    for r in range(2):
        for n in nodes:
            metrics.on_round(engine, n, SimpleNamespace(round=r, params=models[n]), 0.0)  # type: ignore[arg-type]
    metrics.finish()
    mean = torch.stack(list(models.values())).double().mean(0)
    for row in metrics.rows:
        assert row["acc_avg"] == pytest.approx(float(mean.sum()), rel=1e-5)
        assert row["loss_avg"] == pytest.approx(float(mean[0]), rel=1e-5)
    per_node = metrics.node_rows(engine.alive)
    for n, row in zip(nodes, per_node):
        assert row["distance"] == pytest.approx(float((models[n].double() - mean).norm()), rel=1e-5)
        assert row["rounds"] == 2 and row["acc"] == pytest.approx(float(models[n].sum()), rel=1e-6)


def test_a_run_reports_acc_avg_and_writes_nodes_jsonl(tmp_path) -> None:
    from phalanx.sim.report import write_run

    res = go(
        byzantine_nodes=(4,), attack="silent", crash_nodes=(7,), crash_round=2, topology="barabasi-albert:2"
    )
    evals = [r for r in res.rows if r["acc_mean"] is not None]
    assert evals and all(0 <= r["acc_avg"] <= 1 for r in evals)
    assert all(r["acc_avg"] is None for r in res.rows if r["acc_mean"] is None)
    info = write_run(res, tmp_path, plots=False)
    assert info["acc_avg"] == evals[-1]["acc_avg"]
    assert info["crashed"] == [7] and info["crashed_degrees"] == {"7": res.plan.graph.degree[7]}
    lines = [json.loads(x) for x in (tmp_path / "nodes.jsonl").read_text().splitlines()]
    assert [x["node"] for x in lines] == [i for i in range(12) if i != 4]
    assert {x["node"]: x["rounds"] for x in lines}[7] == 2
    assert all(0 <= x["acc"] <= 1 and x["distance"] >= 0 for x in lines)


def test_mean_refuses_a_parameter_it_does_not_take() -> None:
    with pytest.raises(ConfigError, match="takes no parameter; got zzz"):
        plan(SimConfig(**BASE, rule_params={"zzz": 1}))
    plan(SimConfig(**BASE, rule_params={"f": 1}))  # generic, shared by a sweep over rules: dropped
    with pytest.raises(ConfigError, match="local_steps"):
        SimConfig(**BASE, local_steps=0)
