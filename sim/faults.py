"""Fault schedules keyed by round: crashes, churn, network partitions.

The schedule watches rounds finish (an engine observer). A fault "at round r" takes effect at the boundary
between rounds r - 1 and r, as each node sees it: a node that crashes or leaves at round r completes round
r - 1 (so round r - 1's metrics row still has it) and starts nothing of round r (so round r's row does not).

- crash: the planned nodes stop silently at ``crash_round`` (or their own round in ``crash_rounds``), each
  right after it completes the round before (at round 0: before the run starts); neighbours notice only by
  their timeouts. A node that is still behind when some node completes round r itself (or that a sampling
  protocol, which does not have every node complete every round, left out of round r - 1) stops then;
- churn: at every round r >= 1 each live honest node leaves with probability ``churn_leave`` (neighbours get
  ``PeerDown``) and each departed one comes back with probability ``churn_rejoin`` (``PeerUp``; the
  protocol's ``resume`` lets it catch up). The draws are made when the first node enters round r (the
  *leading* round); a node drawn to leave leaves when it completes round r - 1, like a crash;
- partition: during ``partition_rounds = [start, end)`` the nodes ``partition_nodes`` (default
  ``0 .. n/2-1``) and the rest cannot talk, from when the first node enters ``start`` (and ``end``).

Churn in virtual time (any protocol): a trace of ``(seconds, "join" | "leave" | "crash")`` per node, from
``churn_trace`` (a CSV file) or generated from the rates ``churn_leave_rate``/``churn_crash_rate``/
``churn_rejoin_rate`` (per virtual second) and ``churn_late`` (see :mod:`phalanx.sim.churn`), is carried out
by :meth:`FaultSchedule.install` with the engine's clock: ``leave`` lets the protocol announce it
(``Protocol.leave``), ``crash`` is silent, ``join`` brings the node back (``Protocol.resume``). A node whose
first event is a join starts outside the network (built ``late``).

Message loss, latency and bandwidth are the network's (:mod:`phalanx.sim.network`); stragglers are the
worker's slowdown.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from phalanx.gossip.events import PeerId
from phalanx.sim.churn import Trace, churn_from_rates, read_churn_csv

if TYPE_CHECKING:
    from phalanx.sim.config import SimConfig
    from phalanx.sim.engine import Engine
    from phalanx.sim.experiment import Plan


def churn_trace(config: SimConfig, seed: int) -> Trace:
    """The run's churn trace in virtual time: the config's CSV file, or one generated from its rates."""
    if config.churn_trace:
        return read_churn_csv(config.churn_trace, nodes=config.nodes)
    rates = (config.churn_leave_rate, config.churn_crash_rate, config.churn_rejoin_rate, config.churn_late)
    if not any(rates):
        return {}
    horizon = config.churn_horizon or config.rounds * (
        config.round_timeout + config.local_steps * config.step_time
    )
    return churn_from_rates(
        config.nodes,
        leave=config.churn_leave_rate,
        crash=config.churn_crash_rate,
        rejoin=config.churn_rejoin_rate,
        late=config.churn_late,
        horizon=horizon,
        seed=seed,
    )


def late_nodes(trace: Trace) -> frozenset[PeerId]:
    """Nodes whose first event is a join: they start outside the network."""
    return frozenset(node for node, events in trace.items() if events and events[0][1] == "join")


class FaultSchedule:
    def __init__(self, plan: Plan, *, rng: np.random.Generator, trace: Trace | None = None) -> None:
        self.plan = plan
        self.config = plan.config
        self.rng = rng
        self.leading = -1
        self.crashed: set[PeerId] = set()
        self.away: set[PeerId] = set()
        self.neighbours = {str(i): tuple(str(j) for j in plan.graph[i]) for i in plan.graph}
        self.log: list[tuple[int, str, str]] = []
        self.trace: Trace = trace or {}
        self.sampled = plan.protocol.report == "sampled"
        # planned crashes not yet carried out: node -> its crash round
        self.due: dict[PeerId, int] = {str(i): self.config.crash_round_of(i) for i in plan.crashed}
        self.leaving: dict[PeerId, int] = {}  # drawn to leave at a round, not yet gone

    def install(self, engine: Engine) -> None:
        """Take the late nodes away before the run starts and schedule every churn event of the trace."""
        for node in sorted(late_nodes(self.trace), key=int):
            engine.crash(node)
        for node in sorted(self.due, key=int):
            if self.due[node] == 0:  # before it does anything
                self._crash(engine, node, 0)
        for node, events in sorted(self.trace.items(), key=lambda item: int(item[0])):
            for t, event in events:
                engine.call_at(t, partial(self._churn, node, event))

    def _churn(self, node: PeerId, event: str, engine: Engine) -> None:
        if event == "join":
            engine.rejoin(node, self.neighbours[node])
        elif event == "leave":
            engine.leave(node, self.neighbours[node])
        else:
            engine.crash(node)
        self.log.append((self.leading, event, node))

    def _crash(self, engine: Engine, node: PeerId, round_: int) -> None:
        del self.due[node]
        engine.crash(node)
        self.crashed.add(node)
        self.log.append((round_, "crash", node))

    def _leave(self, engine: Engine, node: PeerId, round_: int) -> None:
        del self.leaving[node]
        if node in engine.alive and node not in self.crashed:
            engine.leave(node, self.neighbours[node])
            self.away.add(node)
            self.log.append((round_, "leave", node))

    def on_round(self, engine: Engine, node: PeerId, action: Any, now: float) -> None:
        entering = action.round + 1
        while self.leading < entering:
            self.leading += 1
            self.apply(engine, self.leading)
        # this node's own boundary: what is due at the round it is entering happens now
        if node in self.leaving and self.leaving[node] <= entering:
            self._leave(engine, node, self.leaving[node])
        if node in self.due and self.due[node] <= entering:
            self._crash(engine, node, self.due[node])

    def apply(self, engine: Engine, round_: int) -> None:
        """Round ``round_`` has begun somewhere (the first node entered it)."""
        config = self.config
        for node in sorted(self.due, key=int):
            r = self.due[node]
            # behind by a whole round, or (sampling protocols) not reporting round r - 1 at all
            if r < round_ or (self.sampled and r == round_):
                self._crash(engine, node, r)
        for node in sorted(self.leaving, key=int):
            if self.leaving[node] < round_ or self.sampled:
                self._leave(engine, node, self.leaving[node])
        if config.partition_rounds:
            start, end = config.partition_rounds
            if round_ == start:
                side = config.partition_nodes or range(config.nodes // 2)
                engine.network.set_partition([{str(i) for i in side}])
                self.log.append((round_, "partition", ""))
            elif round_ == end:
                engine.network.set_partition(None)
                self.log.append((round_, "heal", ""))
        if (config.churn_leave or config.churn_rejoin) and round_ > 0:  # at round 0: churn_late
            back = [n for n in sorted(self.away, key=int) if self.rng.random() < config.churn_rejoin]
            for i in self.plan.honest:
                node = str(i)
                if (
                    node in engine.alive
                    and node not in self.crashed
                    and node not in self.leaving
                    and self.rng.random() < config.churn_leave
                ):
                    self.leaving[node] = round_
                    if self.sampled:
                        self._leave(engine, node, round_)
            for node in back:
                self.away.discard(node)
                engine.rejoin(node, self.neighbours[node])
                self.log.append((round_, "rejoin", node))
