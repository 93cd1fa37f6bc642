"""gossip.settings maps user settings to protocol configs once: the simulator and the node get the same."""

from __future__ import annotations

from dataclasses import replace

import networkx as nx
import numpy as np
import pytest
import torch

from phalanx.gossip.settings import SettingsError, dpsgd_config, epidemic_config, modest_config
from phalanx.node import app
from phalanx.node.config import ConfigError as NodeConfigError
from phalanx.node.config import NodeConfig
from phalanx.sim import sampling_builders
from phalanx.sim.config import ConfigError as SimConfigError
from phalanx.sim.config import SimConfig
from phalanx.sim.protocols import NodeView, build_dpsgd
from phalanx.sim.sampling_runs import simulate

SHARED = dict(rule="trimmed-mean", rule_params={"f": 1}, local_steps=3, round_timeout=2.0, rounds=5, seed=7)
PEERS = tuple(f"p{i}" for i in range(9))


def node_protocol(protocol: str, params: dict[str, object]):
    config = NodeConfig(protocol=protocol, protocol_params=params, **SHARED)
    return app.build_protocol(config, "p0", PEERS[1:], torch.zeros(4), start_round=0)


def test_modest_same_config_in_both_worlds():
    # the timeouts the simulator derives from its network are given, so both worlds get the same object
    params = {
        "s": 4,
        "a": 3,
        "ping_timeout": 0.5,
        "progress_timeout": 9.0,
        "trainer_combine_rule": "median",
        "trainer_combine_f": 1,  # once refused by the node (passed straight into ModestConfig)
    }
    sim = sampling_builders.modest_config(SimConfig(protocol="modest", protocol_params=params, **SHARED))
    node = node_protocol("modest", params).config
    assert sim == node
    assert node.trainer_combine_params == {"f": 1} and node.ping_retry == 0.125
    assert node.aggregator_rule == "trimmed-mean" and node.aggregation_timeout == 2.0


def test_epidemic_same_config_in_both_worlds():
    for protocol in ("el-local", "el-oracle"):
        variant = protocol.removeprefix("el-")
        config = SimConfig(protocol=protocol, protocol_params={"s": 3}, **SHARED)
        sim = sampling_builders.el_config(config, variant)
        assert sim == node_protocol(protocol, {"s": 3}).config
        assert sim == epidemic_config(config, variant=variant)
        assert (sim.s, sim.local_steps, sim.round_timeout, sim.rounds, sim.seed) == (3, 3, 2.0, 5, 7)


def test_dpsgd_same_config_in_both_worlds():
    sim_config = SimConfig(topology="complete", nodes=9, **SHARED)
    view = NodeView(
        node="p0",
        neighbours=PEERS[1:],
        weights=dict.fromkeys(PEERS[1:], 0.1),
        peers=PEERS,
        graph=nx.complete_graph(PEERS),
        initial=torch.zeros(4),
    )
    sim = build_dpsgd(view, sim_config, np.random.default_rng(0)).config
    node = node_protocol("dpsgd", {}).config
    assert replace(sim, weights=None) == node
    assert node == dpsgd_config(NodeConfig(**SHARED), neighbours=PEERS[1:])


@pytest.mark.parametrize("protocol", ["dpsgd", "modest", "el-local", "el-oracle"])
def test_unknown_key_is_refused_naming_it(protocol):
    with pytest.raises(NodeConfigError, match=f"unknown protocol_params bogus_key for {protocol}"):
        node_protocol(protocol, {"bogus_key": 1})
    with pytest.raises(NodeConfigError, match=f"unknown protocol_params bogus_key for {protocol}"):
        app.check(NodeConfig(protocol=protocol, protocol_params={"bogus_key": 1}))  # before the node starts
    config = SimConfig(protocol=protocol, protocol_params={"bogus_key": 1})
    with pytest.raises(SettingsError, match=f"unknown protocol_params bogus_key for {protocol}"):
        if protocol == "dpsgd":
            dpsgd_config(config, neighbours=("a",))
        elif protocol == "modest":
            modest_config(config)
        else:
            epidemic_config(config, variant=protocol.removeprefix("el-"))
    with pytest.raises(SimConfigError, match=f"unknown protocol_params bogus_key for {protocol}"):
        simulate(replace(config, nodes=4, rounds=1, dataset="blobs", topology="ring"))


def test_bad_value_names_the_protocol():
    with pytest.raises(SettingsError, match=r"modest: .*combine_quorum"):
        modest_config(NodeConfig(protocol_params={"a": 1, "combine_quorum": 5}))
    with pytest.raises(NodeConfigError, match="el-local: s must be >= 1"):
        node_protocol("el-local", {"s": 0})
