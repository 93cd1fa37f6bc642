"""The runtime ends a node when its protocol says the run is over (``Protocol.finished``), after the rounds
reported before are written; a sampled protocol's node never ends by counting its own reports, and a
finished node keeps answering during its linger."""

from __future__ import annotations

import json

import pytest
import torch
import trio

from phalanx.gossip.events import Action, PeerId, RoundCompleted, Send, TrainingDone
from phalanx.gossip.messages import Ping, Pong, decode, encode
from phalanx.gossip.protocol import Protocol
from phalanx.gossip.wire import Limits
from phalanx.node.bans import BanList
from phalanx.node.metrics import Metrics
from phalanx.node.runtime import NodeRuntime, RuntimeSettings
from phalanx.node.transport import Frame, MemoryNetwork

from .test_runtime import LogWatch, _learner, _records

ROUNDS = 3


class Scripted(Protocol):
    """Reports the last round at once (as a MoDeST trainer of the last round that is also its aggregator
    would); the run is over for it only when a ping of round ``ROUNDS`` arrives. Answers every ping."""

    def __init__(self, params: torch.Tensor) -> None:
        self.params = params
        self.over = False

    @property
    def finished(self) -> bool:
        return self.over

    def start(self, now: float) -> list[Action]:
        return [RoundCompleted(round=ROUNDS - 1, params=self.params)]

    def on_message(self, peer: PeerId, message: object, now: float) -> list[Action]:
        if not isinstance(message, Ping):
            return []
        self.over = self.over or message.round >= ROUNDS
        pong = Pong(round=message.round, nonce=message.nonce, has=True, done=True, latest=ROUNDS)
        return [Send(peer=peer, message=pong)]

    def on_timer(self, name: str, now: float) -> list[Action]:
        return []

    def on_training_done(self, event: TrainingDone, now: float) -> list[Action]:
        return []


async def _pong(transport: object) -> Pong:
    with trio.fail_after(10):
        while True:
            event = await transport.receive()  # type: ignore[attr-defined]
            if isinstance(event, Frame):
                message = decode(event.body, Limits(dim=4))
                assert isinstance(message, Pong)
                return message


@pytest.mark.parametrize("sampled", [True, False])
async def test_a_sampled_node_finishes_on_the_protocol_not_on_its_count(sampled: bool) -> None:
    learner = _learner(2, 0)
    limits = Limits(dim=learner.dim)
    net = MemoryNetwork(limits=limits)
    log = LogWatch()
    async with net.run():
        me, peer = net.transport("me"), net.transport("peer")
        runtime = NodeRuntime(
            protocol=Scripted(learner.get_vector()),
            transport=me,
            learner=learner,
            limits=limits,
            metrics=Metrics(),
            bans=BanList(),
            log=log,
            settings=RuntimeSettings(rounds=ROUNDS, linger=5.0, eval_every=0, sampled=sampled),
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runtime.run)
            await log.until("round", 1)
            # the round writer logs "finished" right after the round line when it counts: no await between
            assert bool(_records(log, "finished")) is (not sampled)
            assert _records(log, "round")[0]["round"] == ROUNDS
            await peer.send("me", encode(Ping(round=ROUNDS - 1, nonce=1, role=0)))
            assert (await _pong(peer)).nonce == 1
            assert bool(_records(log, "finished")) is (not sampled)  # a ping of an earlier round: still on
            await peer.send("me", encode(Ping(round=ROUNDS, nonce=2, role=0)))
            assert (await _pong(peer)).nonce == 2
            await log.until("finished", 1)
            # finished, lingering: it still answers (a straggler of the last round may ping it)
            await peer.send("me", encode(Ping(round=ROUNDS, nonce=3, role=0)))
            assert (await _pong(peer)).nonce == 3
            assert not _records(log, "stopped")
            nursery.cancel_scope.cancel()
    lines = [json.loads(line)["event"] for line in log.getvalue().splitlines()]
    assert [e for e in lines if e in ("round", "finished")] == ["round", "finished"]
