"""Fault schedules keyed by round: crashes, churn, network partitions.

The schedule watches rounds finish (an engine observer) and applies round r's faults when the first node
enters round r (the *leading* round), so faults hit a running system, not a paused one:

- crash: the planned nodes stop silently at ``crash_round``; neighbours notice only by their timeouts;
- churn: at every round each live honest node leaves with probability ``churn_leave`` (neighbours get
  ``PeerDown``) and each departed one comes back with probability ``churn_rejoin`` (``PeerUp``; the
  protocol's ``resume`` lets it catch up);
- partition: during ``partition_rounds = [start, end)`` the nodes ``partition_nodes`` (default
  ``0 .. n/2-1``) and the rest cannot talk.

Message loss, latency and bandwidth are the network's (:mod:`phalanx.sim.network`); stragglers are the
worker's slowdown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from phalanx.gossip.events import PeerId

if TYPE_CHECKING:
    from phalanx.sim.engine import Engine
    from phalanx.sim.experiment import Plan


class FaultSchedule:
    def __init__(self, plan: Plan, *, rng: np.random.Generator) -> None:
        self.plan = plan
        self.config = plan.config
        self.rng = rng
        self.leading = -1
        self.crashed: set[PeerId] = set()
        self.away: set[PeerId] = set()
        self.neighbours = {str(i): tuple(str(j) for j in plan.graph[i]) for i in plan.graph}
        self.log: list[tuple[int, str, str]] = []

    def on_round(self, engine: Engine, node: PeerId, action: Any, now: float) -> None:
        entering = action.round + 1
        while self.leading < entering:
            self.leading += 1
            self.apply(engine, self.leading)

    def apply(self, engine: Engine, round_: int) -> None:
        config = self.config
        if round_ == config.crash_round and self.plan.crashed:
            for i in self.plan.crashed:
                node = str(i)
                engine.crash(node)
                self.crashed.add(node)
                self.log.append((round_, "crash", node))
        if config.partition_rounds:
            start, end = config.partition_rounds
            if round_ == start:
                side = config.partition_nodes or range(config.nodes // 2)
                engine.network.set_partition([{str(i) for i in side}])
                self.log.append((round_, "partition", ""))
            elif round_ == end:
                engine.network.set_partition(None)
                self.log.append((round_, "heal", ""))
        if config.churn_leave or config.churn_rejoin:
            back = [n for n in sorted(self.away, key=int) if self.rng.random() < config.churn_rejoin]
            for i in self.plan.honest:
                node = str(i)
                if (
                    node in engine.alive
                    and node not in self.crashed
                    and self.rng.random() < config.churn_leave
                ):
                    engine.leave(node, self.neighbours[node])
                    self.away.add(node)
                    self.log.append((round_, "leave", node))
            for node in back:
                self.away.discard(node)
                engine.rejoin(node, self.neighbours[node])
                self.log.append((round_, "rejoin", node))
