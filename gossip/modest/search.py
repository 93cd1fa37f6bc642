"""The availability search of MoDeST as its own small state machine: find the first ``need`` candidates of a
round that answer a ping, in rank order, then hand them the payload.

Each candidate is :attr:`Candidate.WAITING` (pinged, no answer yet), :attr:`Candidate.ANSWERED` or
:attr:`Candidate.FAILED` (silent for ``ping_timeout``). The search itself is :attr:`Phase.PINGING` until
its selection settles, then :attr:`Phase.WATCHING` the round it handed on (a liveness guard: if every
chosen peer dies before finishing its part, the next candidates get the payload). The owner
(:class:`~phalanx.gossip.modest.node.Modest`) sends the pings and timers; this class only keeps the books.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field

from phalanx.gossip.events import PeerId
from phalanx.gossip.messages import Message


class Candidate(enum.Enum):
    WAITING = "waiting"
    ANSWERED = "answered"
    FAILED = "failed"


class Phase(enum.Enum):
    PINGING = "pinging"  # the selection has not settled
    WATCHING = "watching"  # the payload went out; watching that the chosen peers finish their part


class Role(enum.IntEnum):
    TRAINERS = 0  # looking for trainers of a round (the payload is an aggregated model)
    AGGREGATORS = 1  # looking for aggregators (the payload is a trained model)


@dataclass(slots=True)
class Search:
    nonce: int
    round: int
    role: Role
    need: int
    pool: Iterator[PeerId]  # candidates in rank order, suspects already skipped
    payload: Message
    order: list[PeerId] = field(default_factory=list)
    state: dict[PeerId, Candidate] = field(default_factory=dict)
    sent_at: dict[PeerId, float] = field(default_factory=dict)
    exhausted: bool = False
    has: set[PeerId] = field(default_factory=set)  # answered that they already hold the payload
    delivered: set[PeerId] = field(default_factory=set)
    progress: bool = False  # a chosen peer reported its part of the round done
    watches: int = 0
    phase: Phase = Phase.PINGING

    def live(self) -> int:
        """Candidates that have not failed."""
        return sum(1 for p in self.order if self.state[p] is not Candidate.FAILED)

    def pull(self) -> PeerId | None:
        """The next candidate in rank order, or None when the pool is empty."""
        if self.exhausted:
            return None
        peer = next(self.pool, None)
        if peer is None:
            self.exhausted = True
            return None
        self.order.append(peer)
        return peer

    def chosen(self) -> list[PeerId] | None:
        """The selection once settled: the first ``need`` answered candidates, with none pending before."""
        picked = []
        for p in self.order:
            st = self.state[p]
            if st is Candidate.WAITING:
                return None
            if st is Candidate.ANSWERED:
                picked.append(p)
                if len(picked) == self.need:
                    return picked
        return picked if self.exhausted else None

    def waiting(self) -> list[PeerId]:
        return [p for p in self.order if self.state[p] is Candidate.WAITING]
