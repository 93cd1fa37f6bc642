"""D-PSGD under random event sequences (hypothesis RuleBasedStateMachine).

Every vector carries its origin in its value: a model trained in round r is the constant 10r and a
neighbour's model for round r is 10r + 0.5 (+ 0.1 per gossip step). Mixing is a convex combination, so a
round-r result must lie in [10r, 10r + 0.5 + 0.1 Q]: a late, early or foreign vector mixed into the wrong
round shows up as a value outside that band.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from phalanx.gossip.dpsgd import DPSGD, DPSGDConfig
from phalanx.gossip.events import (
    MessageReceived,
    PeerDown,
    PeerUp,
    RoundCompleted,
    Send,
    SetTimer,
    TimerFired,
    Train,
    TrainingDone,
)
from phalanx.gossip.messages import ModelUpdate

NEIGHBOURS = ("a", "b", "c")
Q = 2
D = 3


class DPSGDMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        config = DPSGDConfig(neighbours=NEIGHBOURS, round_timeout=1.0, gossip_steps=Q, max_ahead=2)
        self.p = DPSGD(config, torch.zeros(D))
        self.now = 0.0
        self.train_pending: int | None = None
        self.timers: dict[str, float] = {}
        self.completed: list[int] = []
        self.sent_keys: list[tuple[int, int]] = []
        self.do(self.p.start(self.now))

    def do(self, actions) -> None:
        for a in actions:
            if isinstance(a, Train):
                assert self.train_pending is None or a.round > self.train_pending
                self.train_pending = a.round
            elif isinstance(a, SetTimer):
                self.timers[a.name] = a.deadline
            elif isinstance(a, RoundCompleted):
                r = a.round
                assert not self.completed or r > self.completed[-1], "rounds complete in order, once"
                lo, hi = 10 * r - 1e-4, 10 * r + 0.5 + 0.1 * Q + 1e-4
                assert bool(((a.params >= lo) & (a.params <= hi)).all()), f"round {r} mixed {a.params}"
                self.completed.append(r)
            elif isinstance(a, Send):
                assert a.peer in NEIGHBOURS
                self.sent_keys.append((a.message.round, a.message.step))

    def tick(self) -> None:
        self.now += 0.01

    @precondition(lambda self: self.train_pending is not None)
    @rule()
    def finish_training(self) -> None:
        r = self.train_pending
        self.train_pending = None
        self.tick()
        self.do(self.p.handle(TrainingDone(round=r, params=torch.full((D,), 10.0 * r)), self.now))

    @precondition(lambda self: self.p.round >= 1)
    @rule(back=st.integers(1, 3))
    def stale_training(self, back: int) -> None:
        r = max(0, self.p.round - back)  # always an earlier round than the one being trained
        self.do(self.p.handle(TrainingDone(round=r, params=torch.full((D,), -99.0)), self.now))

    @rule(
        peer=st.sampled_from((*NEIGHBOURS, "stranger")), delta=st.integers(-2, 3), step=st.integers(0, Q - 1)
    )
    def message(self, peer: str, delta: int, step: int) -> None:
        r = max(0, self.p.round + delta)
        value = 10.0 * r + 0.5 + 0.1 * step
        self.tick()
        msg = ModelUpdate(round=r, step=step, params=torch.full((D,), value))
        self.do(self.p.handle(MessageReceived(peer=peer, message=msg), self.now))

    @precondition(lambda self: bool(self.timers))
    @rule(data=st.data())
    def fire_timer(self, data) -> None:
        name = data.draw(st.sampled_from(sorted(self.timers)))
        self.now = max(self.now, self.timers.pop(name))
        self.do(self.p.handle(TimerFired(name=name), self.now))

    @rule(peer=st.sampled_from(NEIGHBOURS), up=st.booleans())
    def peer_event(self, peer: str, up: bool) -> None:
        event = PeerUp(peer=peer) if up else PeerDown(peer=peer)
        self.do(self.p.handle(event, self.now))

    @invariant()
    def bounded_state(self) -> None:
        p = self.p
        assert p.phase in ("train", "gossip", "done")
        assert p.pending() <= len(NEIGHBOURS) * (p.config.max_ahead + 1) * Q
        assert all(k >= (p.round, 0) for k in p._inbox)
        if p.phase == "train":
            assert self.train_pending == p.round
        if p.phase == "gossip":
            assert p.timer_name in self.timers or p._complete()

    @invariant()
    def progress_is_monotone(self) -> None:
        expected = self.completed[-1] + 1 if self.completed else 0
        if self.p.counters.resyncs:  # jumped ahead to a majority of its neighbours: never back
            assert self.p.round >= expected
        else:
            assert self.p.round == expected


TestDPSGDStateMachine = DPSGDMachine.TestCase
