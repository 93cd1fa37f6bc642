"""The availability search of MoDeST as its own small state machine: find the first ``need`` candidates of a
round that answer a ping, in rank order, then hand them the payload.

Each candidate is :attr:`Candidate.WAITING` (pinged, no answer yet), :attr:`Candidate.ANSWERED` or
:attr:`Candidate.FAILED` (silent for ``ping_timeout``). The search itself is :attr:`Phase.PINGING` until
its selection settles, then :attr:`Phase.WATCHING` the round it handed on (a liveness guard: if every
chosen peer dies before finishing its part, the next candidates get the payload). The owner
(:class:`~phalanx.gossip.modest.node.Modest`) builds the candidate pool from its view; :class:`Searches`
runs every search of one node: pongs and timers in, pings, timers and deliveries out.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from phalanx.gossip.events import Action, CancelTimer, PeerId, Send, SetTimer
from phalanx.gossip.membership import View
from phalanx.gossip.messages import Message, Ping, Pong
from phalanx.gossip.modest import timers
from phalanx.gossip.modest.config import ModestConfig


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


class Searches:
    """Every search of one node. ``deliver_local(payload, now)`` hands a payload to the node itself when
    the node is one of the chosen candidates (it needs no ping)."""

    def __init__(
        self,
        *,
        node: PeerId,
        config: ModestConfig,
        deliver_local: Callable[[Message, float], list[Action]],
        counters: dict[str, int],
    ) -> None:
        self.node = node
        self.config = config
        self.deliver_local = deliver_local
        self.counters = counters
        self.active: dict[int, Search] = {}
        # Peers that missed a ping in a round, skipped by later searches until the node sees them active
        # after that round (local, not gossiped: each node learns a crash at the cost of one timeout).
        self.suspects: dict[PeerId, int] = {}
        self._nonce = 0

    def clear(self) -> None:
        self.active.clear()

    def suspected(self, peer: PeerId, view: View) -> bool:
        since = self.suspects.get(peer)
        if since is None:
            return False
        rec = view.get(peer)
        if rec is not None and rec.last_active > since:
            del self.suspects[peer]
            return False
        return True

    def begin(
        self, k: int, role: Role, need: int, pool: Iterator[PeerId], payload: Message, now: float
    ) -> list[Action]:
        self._nonce += 1
        search = Search(nonce=self._nonce, round=k, role=role, need=need, pool=pool, payload=payload)
        self.active[search.nonce] = search
        return self._fill(search, now)

    def _ping(self, search: Search, peer: PeerId, sent_at: float) -> Send:
        search.state[peer] = Candidate.WAITING
        search.sent_at[peer] = sent_at
        self.counters["pings"] += 1
        return Send(peer=peer, message=Ping(round=search.round, nonce=search.nonce, role=int(search.role)))

    def _fill(self, search: Search, now: float) -> list[Action]:
        """Top up pending candidates to what is still needed, then deliver if settled."""
        actions: list[Action] = []
        while search.live() < search.need:
            peer = search.pull()
            if peer is None:
                break
            if peer == self.node:
                search.state[peer] = Candidate.ANSWERED
                continue
            actions.append(self._ping(search, peer, now))
        chosen = search.chosen()
        if chosen is None:
            actions.append(SetTimer(name=timers.ping(search.nonce), deadline=now + self.config.ping_retry))
            return actions
        actions.append(CancelTimer(name=timers.ping(search.nonce)))
        search.phase = Phase.WATCHING
        for peer in chosen:
            if peer in search.delivered or peer in search.has:
                continue
            search.delivered.add(peer)
            if peer == self.node:
                actions += self.deliver_local(search.payload, now)
            else:
                actions.append(Send(peer=peer, message=search.payload))
        # Watch the round: if every chosen peer dies before finishing its part, the next candidates get
        # the payload (a liveness guard MoDeST's paper leaves to timeouts at the receivers).
        if search.progress or search.watches >= self.config.watch_limit or chosen == [self.node]:
            self.active.pop(search.nonce, None)
        else:
            actions.append(
                SetTimer(name=timers.watch(search.nonce), deadline=now + self.config.progress_timeout)
            )
        return actions

    def expects(self, peer: PeerId, pong: Pong) -> bool:
        """Whether ``pong`` answers a ping of this node still waiting for ``peer`` (same nonce and round)."""
        search = self.active.get(pong.nonce)
        return (
            search is not None and search.round == pong.round and search.state.get(peer) is Candidate.WAITING
        )

    def on_pong(self, peer: PeerId, pong: Pong, now: float) -> list[Action]:
        search = self.active.get(pong.nonce)
        if search is None or search.state.get(peer) is not Candidate.WAITING:
            return []
        if search.watches and pong.latest > search.round:  # the network is past the watched round
            del self.active[search.nonce]
            return [CancelTimer(name=timers.ping(search.nonce))]
        search.state[peer] = Candidate.ANSWERED
        if pong.has:
            search.has.add(peer)
        if pong.done:
            search.progress = True
            if search.watches:  # watching, and the round has moved on: nothing left to guard
                del self.active[search.nonce]
                return [CancelTimer(name=timers.ping(search.nonce))]
        return self._fill(search, now)

    def on_timer(self, timer: timers.Timer, now: float) -> list[Action]:
        """A ``PING`` or ``WATCH`` timer of search ``timer.arg``."""
        search = self.active.get(timer.arg)
        if search is None:
            return []
        actions: list[Action] = []
        if timer.kind is timers.Kind.PING:
            for peer in search.waiting():
                if now - search.sent_at[peer] >= self.config.ping_timeout - 1e-12:
                    search.state[peer] = Candidate.FAILED
                    self.suspects[peer] = search.round
                else:
                    actions.append(self._ping(search, peer, search.sent_at[peer]))
        else:  # WATCH: ask the chosen peers again whether they finished their part
            search.watches += 1
            for peer in search.order:
                if search.state[peer] is Candidate.ANSWERED and peer != self.node:
                    actions.append(self._ping(search, peer, now))
        return actions + self._fill(search, now)
