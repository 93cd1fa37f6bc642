"""MoDeST under random interleavings: messages delivered in any order, timers and trainings at any time,
nodes crashing. Training is faked as params + 1 and aggregation is the mean, so whatever happens the model
of round k must be exactly k everywhere (round k - 1's reported outcome), and no node ever goes back to an older round."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from phalanx.gossip.events import (
    CancelTimer,
    MessageReceived,
    RoundCompleted,
    Send,
    SetTimer,
    TimerFired,
    Train,
    TrainingDone,
)
from phalanx.gossip.modest import Modest, ModestConfig

PEERS = [f"n{i}" for i in range(10)]


class ModestNetwork(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        config = ModestConfig(s=3, a=2, success_fraction=0.6, rounds=0, trainer_combine_rule=None)
        self.nodes = {
            p: Modest(node=p, params=torch.zeros(2), peers=PEERS, config=config, rng=np.random.default_rng(i))
            for i, p in enumerate(PEERS)
        }
        self.now = 0.0
        self.messages: list[tuple[str, str, object]] = []
        self.timers: dict[tuple[str, str], float] = {}
        self.trainings: list[tuple[str, int, torch.Tensor]] = []
        self.dead: set[str] = set()
        self.reports: list[tuple[str, RoundCompleted]] = []
        self.last_round: dict[str, int] = {}
        for p, node in self.nodes.items():
            self.apply(p, node.start(self.now))

    def apply(self, node: str, actions: list) -> None:
        for a in actions:
            if isinstance(a, Send):
                self.messages.append((node, a.peer, a.message))
            elif isinstance(a, SetTimer):
                self.timers[(node, a.name)] = a.deadline
            elif isinstance(a, CancelTimer):
                self.timers.pop((node, a.name), None)
            elif isinstance(a, Train):
                self.trainings.append((node, a.round, a.params))
            elif isinstance(a, RoundCompleted):
                assert a.round >= self.last_round.get(node, -1), "a node went back to an older round"
                self.last_round[node] = a.round
                self.reports.append((node, a))

    @precondition(lambda self: self.messages)
    @rule(data=st.data())
    def deliver(self, data):
        i = data.draw(st.integers(0, len(self.messages) - 1))
        sender, peer, message = self.messages.pop(i)
        self.now += 0.01
        if peer not in self.dead:
            self.apply(peer, self.nodes[peer].handle(MessageReceived(peer=sender, message=message), self.now))

    @precondition(lambda self: self.messages)
    @rule(data=st.data())
    def lose(self, data):
        self.messages.pop(data.draw(st.integers(0, len(self.messages) - 1)))

    @precondition(lambda self: self.trainings)
    @rule(data=st.data())
    def finish_training(self, data):
        node, k, params = self.trainings.pop(data.draw(st.integers(0, len(self.trainings) - 1)))
        self.now += 0.01
        if node not in self.dead:
            self.apply(node, self.nodes[node].handle(TrainingDone(round=k, params=params + 1), self.now))

    @precondition(lambda self: self.timers)
    @rule(data=st.data())
    def fire_timer(self, data):
        key = data.draw(st.sampled_from(sorted(self.timers)))
        self.now = max(self.now, self.timers.pop(key))
        node, name = key
        if node not in self.dead:
            self.apply(node, self.nodes[node].handle(TimerFired(name=name), self.now))

    @precondition(lambda self: len(self.dead) < 6)
    @rule(node=st.sampled_from(PEERS))
    def crash(self, node):
        self.dead.add(node)

    @rule()
    def wait(self):
        self.now += 0.1

    @invariant()
    def round_k_outcome_is_k_plus_one(self):
        # round k's outcome is the aggregate that round k + 1 trains from; training adds 1
        for _, rc in self.reports:
            assert torch.equal(rc.params, torch.full((2,), float(rc.round + 1)))


ModestNetwork.TestCase.settings = settings(max_examples=40, stateful_step_count=60, deadline=None)
TestModestNetwork = ModestNetwork.TestCase
