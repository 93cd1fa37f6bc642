"""Whole runs on blobs: reproducible to the bit, survive crashes, churn and partitions, honest-only metrics."""

from __future__ import annotations

import pytest
import torch

from phalanx.sim.config import ConfigError, SimConfig
from phalanx.sim.experiment import plan, run

BASE = {"dataset": "blobs", "nodes": 12, "rounds": 12, "topology": "regular:4", "eval_every": 4}


def go(**kw):
    return run(plan(SimConfig(**{**BASE, **kw})))


def strip(rows):
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]


def test_same_seed_same_metrics_bit_for_bit() -> None:
    kw = dict(
        loss=0.1,
        straggler_fraction=0.25,
        churn_leave=0.1,
        churn_rejoin=0.5,
        byzantine_fraction=0.17,
        attack="dissensus",
        crash_fraction=0.1,
        crash_round=5,
    )
    a, b = go(**kw), go(**kw)
    assert strip(a.rows) == strip(b.rows)
    c = go(**{**kw, "seed": 1})
    assert strip(a.rows) != strip(c.rows)


def test_dpsgd_learns_and_models_agree() -> None:
    res = go(rounds=30, eval_every=10)
    first, last = res.rows[0], res.rows[-1]
    assert last["acc_mean"] > 0.95 and last["acc_min"] > 0.9
    assert first["acc_mean"] < last["acc_mean"]
    peak = max(r["consensus"] for r in res.rows)
    assert last["consensus"] < 0.6 * peak
    assert all(r["live"] == 12 for r in res.rows)


def test_half_the_nodes_crash_and_the_rest_go_on() -> None:
    res = go(nodes=16, rounds=16, crash_fraction=0.5, crash_round=6, topology="regular:6")
    assert len(res.rows) == 16
    assert len(res.crashed_ids) == 8
    assert res.rows[-1]["live"] == 8 and res.rows[-1]["honest_reported"] == 8
    assert res.rows[-1]["acc_mean"] > 0.9
    # After the crash each survivor waits out its timeout for dead neighbours, then mixes what came.
    late = [r for r in res.rows if r["round"] > 6]
    assert late[-1]["virtual_time"] - late[0]["virtual_time"] >= (len(late) - 1) * 1.0


@pytest.mark.parametrize("placement", ["hubs", "random", "data"])
def test_crash_placement(placement: str) -> None:
    p = plan(
        SimConfig(
            **{**BASE, "topology": "barabasi-albert:2", "crash_fraction": 0.25, "crash_placement": placement}
        )
    )
    assert len(p.crashed) == 3
    if placement == "hubs":
        degrees = sorted((p.graph.degree[i] for i in p.graph), reverse=True)
        assert sorted((p.graph.degree[i] for i in p.crashed), reverse=True) == degrees[:3]


def test_churn_and_partition_and_loss_do_not_stop_the_run() -> None:
    res = go(rounds=14, churn_leave=0.2, churn_rejoin=0.5, partition_rounds=(3, 7), loss=0.2)
    assert [r["round"] for r in res.rows] == list(range(14))
    assert res.engine_stats["lost"] > 0
    assert res.rows[-1]["acc_mean"] > 0.8


def test_partition_cuts_exactly_the_chosen_side_off() -> None:
    """Node 0 alone behind the cut: only its own links drop messages (at most both directions of each,
    every round of the interval and the round it starts in); the default halves cut many more links."""
    p = plan(SimConfig(**{**BASE, "rounds": 8, "partition_rounds": (2, 5), "partition_nodes": (0,)}))
    lost = run(p).engine_stats["lost"]
    assert 0 < lost <= 2 * p.graph.degree[0] * (5 - 2 + 1)
    halves = go(rounds=8, partition_rounds=(2, 5)).engine_stats["lost"]
    assert halves > lost


def test_time_varying_topology_and_multi_step_sam() -> None:
    res = go(topology="dynamic-regular:3", gossip_steps=2, sam_rho=0.05, rounds=8)
    assert res.rows[-1]["acc_mean"] > 0.8
    assert res.rows[-1]["messages"] == 8 * 12 * 3 * 2


def test_accuracy_is_over_honest_nodes_only_and_eval_subset() -> None:
    res = go(byzantine_fraction=0.25, attack="silent", eval_nodes=3)
    assert len(res.plan.byzantine) == 3
    assert all(r["evaluated"] in (0, 3) for r in res.rows)
    assert res.rows[-1]["honest_reported"] == 9
    assert res.rows[-1]["acc_mean"] > 0.9


def test_byzantine_placement_around_a_target() -> None:
    p = plan(
        SimConfig(
            **{
                **BASE,
                "byzantine_fraction": 0.34,
                "byzantine_placement": "target",
                "byzantine_target": 5,
                "attack": "silent",
            }
        )
    )
    assert set(p.graph[5]) <= p.byzantine


def test_dissensus_hurts_plain_gossip_consensus() -> None:
    clean = go(rounds=16)
    attacked = go(rounds=16, byzantine_fraction=0.25, attack="dissensus", attack_params={"epsilon": 3.0})
    assert attacked.rows[-1]["consensus"] > 3 * clean.rows[-1]["consensus"]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"protocol": "nope"}, "unknown protocol"),
        ({"rule": "nope"}, "unknown rule"),
        ({"model": "nope"}, "unknown model"),
        ({"byzantine_fraction": 0.2, "attack": "nope"}, "unknown attack"),
        ({"partition": "nope"}, "unknown partition"),
        ({"topology": "regular:3", "nodes": 11}, "even"),
    ],
)
def test_bad_configs_fail_in_plan(changes, match) -> None:
    with pytest.raises(ValueError, match=match):
        plan(SimConfig(**{**BASE, **changes}))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"loss": -0.1}, "loss"),
        ({"nodes": 1}, "nodes"),
        ({"byzantine_nodes": (3, 3)}, "twice"),
        ({"crash_nodes": (99,)}, "node ids"),
        ({"partition_rounds": (5, 2)}, "partition_rounds"),
        ({"partition_nodes": tuple(range(12))}, "other side"),
        ({"partition_nodes": (12,)}, "node ids"),
        ({"churn_leave": 1.5}, "churn_leave"),
    ],
)
def test_bad_values_fail_in_config(changes, match) -> None:
    with pytest.raises(ConfigError, match=match):
        SimConfig(**{**BASE, **changes})


def test_edge_latency_and_bandwidth_from_a_graph_file(tmp_path) -> None:
    graph = tmp_path / "slow.txt"
    graph.write_text("".join(f"{i} {(i + 1) % 6} latency=0.3 bandwidth=1e6\n" for i in range(6)))
    res = go(nodes=6, rounds=3, topology=f"file:{graph}", round_timeout=5.0)
    # a round: one local step (0.01 s) + 0.3 s latency + the model's bytes at 1 MB/s
    size = res.rows[0]["bytes"] / res.rows[0]["messages"]
    per_round = res.rows[-1]["virtual_time"] / 3
    assert per_round == pytest.approx(0.01 + 0.3 + size / 1e6, rel=1e-6)
    fast = go(nodes=6, rounds=3, topology="ring", round_timeout=5.0)
    assert fast.rows[-1]["virtual_time"] / 3 < 0.05


def test_a_finished_run_leaves_no_reference_cycles() -> None:
    # The engine holds every node's models; a cycle through it would keep them until some later full
    # collection (and, frozen by the next run's engine, through that whole run).
    import gc

    p = plan(SimConfig(**{**BASE, "rounds": 3, "byzantine_fraction": 0.25, "attack": "alie"}))
    gc.collect()
    result = run(p)
    assert result.rows
    del result
    assert gc.collect() == 0


def test_omniscient_attackers_see_the_round_s_neighbours_on_a_time_varying_graph() -> None:
    """On dynamic-regular:K the attacker's view of its target uses that round's graph and weights."""
    from types import SimpleNamespace

    from phalanx.gossip.messages import ModelUpdate
    from phalanx.sim.experiment import _omniscient_hook, _schedules
    from phalanx.sim.mixing import neighbour_weights
    from phalanx.sim.topology import TimeVarying

    p = plan(SimConfig(**{**BASE, "topology": "dynamic-regular:3", "byzantine_nodes": (5,)}))
    _, weights_at = _schedules(p)
    round_ = 3
    outbox = {str(i): ModelUpdate(round=round_, params=torch.full((4,), float(i))) for i in range(12)}
    hook = _omniscient_hook({"engine": SimpleNamespace(outbox=outbox)}, p, frozenset({"5"}), weights_at)
    graph = TimeVarying(12, 3, p.config.seed).graph(round_)
    target = next(iter(graph[5]))  # a node the attacker talks to in this round
    view = hook(str(target), round_, 0)
    assert view is not None
    honest = sorted(j for j in graph[target] if j != 5)
    assert sorted(int(v[0]) for v in view.neighbours) == honest
    assert view.byzantine == 1
    expected = neighbour_weights(graph, p.config.mixing)[target]
    assert view.byzantine_weight == pytest.approx(expected[5])
    assert sorted(float(w) for w in view.weights) == pytest.approx(sorted(expected[j] for j in honest))
    # A target none of whose honest neighbours sent this round: an empty stack of the model's width.
    lonely = {str(target): outbox[str(target)]}
    hook = _omniscient_hook({"engine": SimpleNamespace(outbox=lonely)}, p, frozenset({"5"}), weights_at)
    view = hook(str(target), round_, 0)
    assert view is not None and view.neighbours.shape == (0, 4) and view.own is not None


def test_omniscient_attack_runs_on_a_time_varying_graph() -> None:
    hit = go(topology="dynamic-regular:4", byzantine_nodes=(0, 1, 2), attack="ipm", rounds=6)
    blind = go(
        topology="dynamic-regular:4", byzantine_nodes=(0, 1, 2), attack="ipm", rounds=6, omniscient=False
    )
    assert [r["round"] for r in hit.rows] == list(range(6))
    assert strip(hit.rows) != strip(blind.rows)  # the omniscient attackers act on what they were shown


def test_uplink_queue_slows_rounds_when_bandwidth_is_scarce() -> None:
    """With a model of S bytes at bandwidth B, a node's 4 copies leave one after another: the run's
    virtual time grows; with infinite bandwidth the option changes nothing."""
    slow = dict(bandwidth=2e6, round_timeout=5.0, rounds=3)
    free = go(**slow)
    queued = go(**slow, uplink_queue=True)
    assert queued.rows[-1]["virtual_time"] > free.rows[-1]["virtual_time"] * 1.5
    assert strip(go(rounds=3, uplink_queue=True).rows) == strip(go(rounds=3).rows)
