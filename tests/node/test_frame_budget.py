"""Each peer's frame budget per round (RuntimeSettings.frames_per_round): a flood is dropped before it is
decoded, counted and struck; an honest neighbour sending its model every round never meets the budget."""

from __future__ import annotations

import trio

from phalanx.gossip.dpsgd import DPSGD, DPSGDConfig
from phalanx.gossip.messages import ModelUpdate, encode
from phalanx.gossip.wire import Limits
from phalanx.node.bans import BanList
from phalanx.node.metrics import Metrics
from phalanx.node.runtime import NodeRuntime, RuntimeSettings
from phalanx.node.transport import MemoryNetwork
from tests.node.test_runtime import LogWatch, _learner, _records

BUDGET = 8


def _runtime(transport, learner, limits, log, metrics, *, timeout: float, bans: BanList) -> NodeRuntime:  # type: ignore[no-untyped-def]
    protocol = DPSGD(
        DPSGDConfig(neighbours=("peer",), rounds=0, round_timeout=timeout, max_ahead=10**6),
        learner.get_vector(),
    )
    return NodeRuntime(
        protocol=protocol,
        transport=transport,
        learner=learner,
        limits=limits,
        metrics=metrics,
        bans=bans,
        log=log,
        settings=RuntimeSettings(frames_per_round=BUDGET, frame_window=3600),
    )


async def test_a_flood_within_one_round_is_dropped_undecoded_and_struck() -> None:
    learner = _learner(2, 0)
    limits = Limits(dim=learner.dim)
    net = MemoryNetwork(limits=limits)
    log, metrics, bans = LogWatch(), Metrics(), BanList(threshold=3)
    async with net.run():
        me, peer = net.transport("me"), net.transport("peer")
        runtime = _runtime(me, learner, limits, log, metrics, timeout=3600, bans=bans)  # one long round
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runtime.run)
            for r in range(BUDGET + 4):  # distinct far-ahead rounds: each one valid on its own
                await peer.send("me", encode(ModelUpdate(round=100 + r, params=learner.get_vector())))
            await log.until("banned", 1)
            nursery.cancel_scope.cancel()
    assert metrics.messages_in == BUDGET  # the frames past the budget were never decoded nor dispatched
    assert metrics.rejected["flood"] >= 3
    assert len(_records(log, "rejected")) == 1  # one report per window, not a log line per frame
    assert bans.is_banned("peer", runtime.clock())


async def test_an_honest_neighbour_sending_every_round_stays_within_its_budget() -> None:
    learner = _learner(2, 0)
    limits = Limits(dim=learner.dim)
    net = MemoryNetwork(limits=limits)
    log, metrics, bans = LogWatch(), Metrics(), BanList(threshold=1)
    rounds = 3 * BUDGET  # more frames in all than one round's budget
    async with net.run():
        me, peer = net.transport("me"), net.transport("peer")
        runtime = _runtime(me, learner, limits, log, metrics, timeout=0.05, bans=bans)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runtime.run)
            for r in range(rounds):
                await log.until("round", r)  # one model per round, once the node is in that round
                await peer.send("me", encode(ModelUpdate(round=r, params=learner.get_vector())))
            await log.until("round", rounds)
            nursery.cancel_scope.cancel()
    assert "flood" not in metrics.rejected
    assert not bans.is_banned("peer", runtime.clock())


async def test_the_transports_budget_counters_reach_the_status() -> None:
    learner = _learner(2, 0)
    limits = Limits(dim=learner.dim)
    net = MemoryNetwork(limits=limits)
    log, metrics = LogWatch(), Metrics()
    async with net.run():
        runtime = _runtime(net.transport("me"), learner, limits, log, metrics, timeout=3600, bans=BanList())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runtime.run)
            await log.until("listening", 0)
            protocol = metrics.status()["protocol_counters"]
            nursery.cancel_scope.cancel()
    assert {"transport_inbound_streams", "transport_refused_busy"} <= set(protocol)
