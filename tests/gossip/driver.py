"""A tiny deterministic runner for protocol tests: fixed latency, fixed training time, no sim/ needed.

Training is faked as ``params + 1`` so a model's value counts the training rounds behind it.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from typing import Any

import torch

from phalanx.gossip.events import (
    Action,
    CancelTimer,
    MessageReceived,
    PeerId,
    RoundCompleted,
    Send,
    SetTimer,
    TimerFired,
    Train,
    TrainingDone,
)
from phalanx.gossip.messages import encoded_size
from phalanx.gossip.protocol import Protocol


class Driver:
    def __init__(
        self,
        protocols: Mapping[PeerId, Protocol],
        *,
        latency: float = 0.01,
        train_time: float = 0.1,
        tamper: Callable[[PeerId, Any], Any] | None = None,
    ) -> None:
        self.protocols = dict(protocols)
        self.latency = latency
        self.train_time = train_time
        self.tamper = tamper
        self.alive = set(self.protocols)
        self.now = 0.0
        self.heap: list[tuple[float, int, PeerId, Any]] = []
        self.seq = 0
        self.timers: dict[tuple[PeerId, str], int] = {}
        self.completed: list[tuple[float, PeerId, RoundCompleted]] = []
        self.sent: list[tuple[PeerId, PeerId, Any]] = []
        self.bytes = 0

    def push(self, t: float, node: PeerId, item: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, node, item))

    def apply(self, node: PeerId, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Send):
                msg = self.tamper(node, a.message) if self.tamper else a.message
                self.sent.append((node, a.peer, msg))
                self.bytes += encoded_size(msg)
                self.push(self.now + self.latency, a.peer, MessageReceived(peer=node, message=msg))
            elif isinstance(a, SetTimer):
                gen = self.timers.get((node, a.name), 0) + 1
                self.timers[(node, a.name)] = gen
                self.push(a.deadline, node, ("timer", a.name, gen))
            elif isinstance(a, CancelTimer):
                self.timers.pop((node, a.name), None)
            elif isinstance(a, Train):
                done = TrainingDone(round=a.round, params=a.params + 1.0)
                self.push(self.now + self.train_time, node, done)
            elif isinstance(a, RoundCompleted):
                self.completed.append((self.now, node, a))

    def call(self, node: PeerId, fn: Callable[[float], list[Action]]) -> None:
        self.apply(node, fn(self.now))

    def run(self, until: float, *, start: bool = True) -> None:
        if start:
            for node in sorted(self.protocols):
                self.apply(node, self.protocols[node].start(self.now))
        while self.heap and self.heap[0][0] <= until:
            t, _, node, item = heapq.heappop(self.heap)
            self.now = t
            if node not in self.alive:
                continue
            if isinstance(item, tuple):
                _, name, gen = item
                if self.timers.get((node, name)) != gen:
                    continue
                del self.timers[(node, name)]
                item = TimerFired(name=name)
            self.apply(node, self.protocols[node].handle(item, t))
        self.now = until

    def rounds(self) -> dict[int, list[torch.Tensor]]:
        out: dict[int, list[torch.Tensor]] = {}
        for _, _, rc in self.completed:
            out.setdefault(rc.round, []).append(rc.params)
        return out
