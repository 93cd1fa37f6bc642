"""The virtual network: per-edge latency and bandwidth, message loss, partitions.

A message of ``size`` bytes from u to v takes ``latency(u, v) + size / bandwidth(u, v)`` seconds, where
edge attributes ``latency`` and ``bandwidth`` override the defaults; peers that are not adjacent in the
graph (protocols with their own membership, such as MoDeST, may talk to anyone) use the defaults. It is
lost with probability ``loss``, and always when u and v are on different sides of an active partition.

By default links are independent (no queueing). With ``uplink=True`` a node's sends share its uplink: each
message starts transmitting when the node's previous one has left (``free_at``), so a model sent to k
neighbours at bandwidth B reaches the last one ``k * size / B`` after it was sent, plus the latency. A lost
or partitioned message still occupied the uplink (the sender cannot tell).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np

from phalanx.node.learner import derive_seed

if TYPE_CHECKING:
    from phalanx.sim.config import SimConfig


def network_for(graph: nx.Graph, config: SimConfig) -> Network:
    """The virtual network a simulation's settings describe, with its own seeded random stream."""
    return Network(
        graph,
        latency=config.latency,
        bandwidth=config.bandwidth,
        loss=config.loss,
        uplink=config.uplink_queue,
        rng=np.random.default_rng(derive_seed(config.seed, "network")),
    )


class Network:
    def __init__(
        self,
        graph: nx.Graph,
        *,
        latency: float = 0.01,
        bandwidth: float = math.inf,
        loss: float = 0.0,
        uplink: bool = False,
        rng: np.random.Generator,
    ) -> None:
        if latency < 0 or not bandwidth > 0 or not 0 <= loss < 1:
            raise ValueError("network: latency must be >= 0, bandwidth > 0 and loss in [0, 1)")
        self.graph = graph
        self.latency = latency
        self.bandwidth = bandwidth
        self.loss = loss
        self.rng = rng
        self.uplink = uplink
        self._free_at: dict[str, float] = {}  # per sender: when its uplink is idle again (uplink=True)
        self._side: dict[str, int] | None = None
        self._edge_cache: dict[tuple[str, str], tuple[float, float]] = {}
        # No edge overrides the defaults (the common case): every link is alike, nothing to look up.
        self._uniform = not any("latency" in d or "bandwidth" in d for _, _, d in graph.edges(data=True))
        self.lost = 0

    def set_partition(self, groups: list[set[str]] | None) -> None:
        """Cut the network into ``groups`` (nodes in no group form one more group); ``None`` heals it."""
        if groups is None:
            self._side = None
            return
        self._side = {node: i for i, group in enumerate(groups) for node in group}

    def _edge(self, u: str, v: str) -> tuple[float, float]:
        key = (u, v)
        cached = self._edge_cache.get(key)
        if cached is None:
            data = self.graph.get_edge_data(int(u), int(v)) if u.isdigit() and v.isdigit() else None
            data = data or {}
            cached = (float(data.get("latency", self.latency)), float(data.get("bandwidth", self.bandwidth)))
            self._edge_cache[key] = cached
        return cached

    def fixed_delay(self, size: int) -> float | None:
        """The time every message of ``size`` bytes takes when no link differs, none is lost and no
        partition is up (what :meth:`transit` returns for any pair then, drawing nothing); else None."""
        if self._side is not None or self.loss or not self._uniform or self.uplink:
            return None
        return self.latency + size / self.bandwidth  # size / inf == 0.0

    def transit(self, u: str, v: str, size: int, now: float = 0.0) -> float | None:
        """Seconds the message sent at ``now`` takes, or ``None`` if it is lost."""
        latency, bandwidth = (self.latency, self.bandwidth) if self._uniform else self._edge(u, v)
        wire = size / bandwidth  # 0.0 on an unlimited link
        if self.uplink:  # wait for the sender's earlier messages to leave, then occupy its uplink
            start = max(now, self._free_at.get(u, now))
            self._free_at[u] = start + wire
            wire += start - now
        if self._side is not None and self._side.get(u, -1) != self._side.get(v, -1):
            self.lost += 1
            return None
        if self.loss and self.rng.random() < self.loss:
            self.lost += 1
            return None
        return latency + wire
