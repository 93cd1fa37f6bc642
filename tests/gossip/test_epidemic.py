"""Epidemic Learning: the oracle graph is s-regular and shared; rounds run with the test driver."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from phalanx.gossip.epidemic import Epidemic, EpidemicConfig, oracle_out_neighbours
from phalanx.gossip.messages import ModelUpdate
from tests.gossip.driver import Driver


@given(st.integers(3, 40), st.integers(0, 1000), st.data())
def test_oracle_graph_is_s_regular_and_changes_every_round(n, k, data):
    peers = tuple(f"p{i}" for i in range(n))
    s = data.draw(st.integers(1, n - 1))
    graph = oracle_out_neighbours(peers, k, s, 7)
    indeg = dict.fromkeys(peers, 0)
    for node, outs in graph.items():
        assert len(set(outs)) == s and node not in outs
        for p in outs:
            indeg[p] += 1
    assert set(indeg.values()) == {s}
    assert oracle_out_neighbours(tuple(reversed(peers)), k, s, 7) == graph  # any order of the same peers


def test_oracle_graphs_differ_between_rounds():
    peers = tuple(f"p{i}" for i in range(30))
    assert len({tuple(sorted(oracle_out_neighbours(peers, k, 3, 0).items())) for k in range(10)}) == 10


def network(variant: str, n: int = 12, s: int = 3, rounds: int = 8) -> dict[str, Epidemic]:
    peers = [f"n{i:02d}" for i in range(n)]
    config = EpidemicConfig(s=s, variant=variant, rounds=rounds, round_timeout=0.5)
    return {
        p: Epidemic(node=p, params=torch.zeros(2), peers=peers, config=config, rng=np.random.default_rng(i))
        for i, p in enumerate(peers)
    }


@pytest.mark.parametrize("variant", ["local", "oracle"])
def test_rounds_average_own_and_received_models(variant):
    d = Driver(network(variant))
    d.run(100)
    rounds = d.rounds()
    assert sorted(rounds) == list(range(8)) and all(len(v) == 12 for v in rounds.values())
    for k, models in rounds.items():
        assert all(torch.allclose(m, torch.full((2,), float(k + 1)), rtol=0, atol=1e-5) for m in models)
    sends = [m for _, _, m in d.sent if isinstance(m, ModelUpdate)]
    assert len(sends) == 8 * 12 * 3
    if variant == "oracle":
        assert all(rc.received == 3 for _, _, rc in d.completed)


def test_oracle_nodes_finish_at_the_timeout_when_a_sender_is_dead():
    d = Driver(network("oracle", rounds=3))
    d.alive.discard("n00")
    d.run(100)
    assert max(d.rounds()) == 2


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError):
        EpidemicConfig(variant="global")
    with pytest.raises(ValueError):
        network("oracle", n=3, s=3)
