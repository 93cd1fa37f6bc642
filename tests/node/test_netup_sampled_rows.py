"""``net up``'s bookkeeping for a sampled protocol, without processes: metrics rows from each round's
reporters, the network's progress line, and nodes told to stop counted as neither failed nor running."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from phalanx.gossip.byzantine import Byzantine
from phalanx.gossip.dpsgd import DPSGD, DPSGDConfig
from phalanx.gossip.spec import AttackSpec, wrap_byzantine
from phalanx.node.netup import NetResult, NodeRecord, node_table, progress_of, rows


def report(round_: int, t: float, acc: float) -> dict[str, Any]:
    return {"event": "round", "round": round_, "t": t, "accuracy": acc, "bytes_out": 100 * round_}


def records() -> list[NodeRecord]:
    """4 nodes, 3 rounds of MoDeST: each round reported by two trainers; node 3 killed at round 1, node 2
    sampled in no late round and told to stop."""
    a = NodeRecord(index=0, peer_id="a", address="", rounds=[report(1, 1.0, 0.5), report(3, 3.0, 0.9)])
    b = NodeRecord(index=1, peer_id="b", address="", rounds=[report(2, 2.0, 0.7), report(3, 3.1, 0.8)])
    c = NodeRecord(index=2, peer_id="c", address="", rounds=[report(2, 2.1, 0.6)], told=True, exit_code=0)
    d = NodeRecord(index=3, peer_id="d", address="", rounds=[report(1, 1.1, 0.4)], killed_at=1)
    a.finished = b.finished = True
    return [a, b, c, d]


def test_sampled_rows_come_from_each_rounds_reporters() -> None:
    out = rows(NetResult(nodes=records(), wall_time=5.0), 3, sampled=True)
    assert [r["round"] for r in out] == [0, 1, 2]
    assert [r["acc_mean"] for r in out] == pytest.approx([0.45, 0.65, 0.85])
    assert [r["live"] for r in out] == [4, 3, 3]  # alive then: node 3 was killed once round 1 was reported
    assert [r["time"] for r in out] == [1.1, 2.1, 3.1]
    # the every-node reading counts reporters as live (there every live node reports every round)
    assert [r["live"] for r in rows(NetResult(nodes=records(), wall_time=5.0), 3)] == [2, 2, 2]


def test_progress_is_the_networks_and_told_nodes_did_not_fail() -> None:
    recs = records()
    p = progress_of(recs, 3, 4.0, sampled=True)
    assert p.line().startswith("net up: network round 3 of 3; 0 running, 2 finished, 1 killed")
    assert p.failed == 0 and not recs[2].live
    assert progress_of(recs, 3, 4.0).line().startswith("net up: round min 2 / median 3 / max 3 of 3")
    states = [line.split()[-1] for line in node_table(NetResult(nodes=recs, wall_time=5.0)).splitlines()[2:]]
    assert states == ["finished", "finished", "stopped", "killed@1"]


def test_wrappers_forward_finished() -> None:
    honest = DPSGD(DPSGDConfig(neighbours=("x",), rounds=2, round_timeout=1.0), torch.zeros(3))
    wrapped = wrap_byzantine(honest, AttackSpec(behaviour="silent", rng=np.random.default_rng(0)))
    assert isinstance(wrapped, Byzantine) and not wrapped.finished
    honest.round = 2
    assert wrapped.finished
