"""The registry of protocols the simulator can run: ``PROTOCOLS: dict[str, Builder]``.

A builder makes one node's protocol object from what that node may know, and nothing else::

    def build(view: NodeView, config: SimConfig, rng: numpy.random.Generator) -> Protocol

- ``view`` is the node's view of the network (:class:`NodeView`): its id, its neighbours and their mixing
  weights, every peer's id (the membership a sampling protocol starts from), the graph (read it, never
  change it), the initial model vector (shared by every node: copy before writing into it) and, for a
  time-varying topology, ``schedule(round) -> {neighbour: weight}``, and the set of Byzantine node ids
  (``view.node in view.byzantine`` tells a builder to build an attacker; the experiment also wraps every
  Byzantine node's protocol in :class:`~phalanx.gossip.byzantine.Byzantine`, which rewrites ``ModelUpdate``s);
- ``config`` is the whole validated :class:`~phalanx.sim.config.SimConfig`; protocol-specific settings
  live in ``config.protocol_params`` (a dict from the TOML table ``[protocol_params]`` or ``--protocol-param
  KEY=VALUE`` flags) besides the shared ones (``rule``, ``rule_params``, ``local_steps``, ``gossip_steps``,
  ``round_timeout``, ``rounds``);
- ``rng`` is the node's own generator, seeded from (run seed, node id): draw from it, never from a global RNG.

The engine is protocol-agnostic; Byzantine behaviour is layered on top of whatever a builder returns
(:class:`~phalanx.gossip.byzantine.Byzantine`). Register a new protocol by adding its builder here:
``PROTOCOLS["name"] = build_name``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np
import torch

from phalanx.gossip.dpsgd import DPSGD
from phalanx.gossip.events import PeerId
from phalanx.gossip.protocol import Protocol
from phalanx.gossip.settings import dpsgd_config
from phalanx.sim.config import settings_errors
from phalanx.sim.sampling_builders import (
    build_el_local,
    build_el_oracle,
    build_modest,
    el_rule_inputs,
    modest_rule_inputs,
)

if TYPE_CHECKING:
    from phalanx.sim.config import SimConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeView:
    """What one simulated node knows when its protocol is built (see the module docstring)."""

    node: PeerId
    neighbours: tuple[PeerId, ...]
    weights: Mapping[PeerId, float]
    peers: tuple[PeerId, ...]
    graph: nx.Graph
    initial: torch.Tensor
    schedule: Callable[[int], Mapping[PeerId, float]] | None = None
    byzantine: frozenset[PeerId] = frozenset()  # the run's Byzantine nodes (a simulator's oracle knowledge)


Builder = Callable[[NodeView, "SimConfig", np.random.Generator], Protocol]


def build_dpsgd(view: NodeView, config: SimConfig, rng: np.random.Generator) -> Protocol:
    """D-PSGD (and DFedSAM / DFedSAM-MGS through ``sam_rho`` and ``gossip_steps``)."""
    with settings_errors():
        settings = dpsgd_config(
            config,
            neighbours=view.neighbours,
            weights=view.weights,
            schedule=view.schedule,
            include_own=config.include_own,
        )
    return DPSGD(settings, view.initial)


PROTOCOLS: dict[str, Builder] = {
    "dpsgd": build_dpsgd,
    "modest": build_modest,
    "el-local": build_el_local,
    "el-oracle": build_el_oracle,
}

# Protocols whose rule combines a sample rather than a neighbourhood: how many inputs it gets (what the
# experiment checks the rule's tolerance against, instead of the graph's degrees).
RULE_INPUTS: dict[str, Callable[[SimConfig], int]] = {
    "modest": modest_rule_inputs,
    "el-local": el_rule_inputs,
    "el-oracle": el_rule_inputs,
}
