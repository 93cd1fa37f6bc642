"""MoDeST (de Vos et al.): decentralized sampling of trainers and aggregators, and a Byzantine-robust variant.

Round ``k`` has a sample of ``s`` trainers and ``a`` aggregators that every node computes alike from its
membership view (:mod:`phalanx.gossip.sampling`). The flow of one round:

1. An aggregator of round ``k`` holds the round-``k`` model; it pings the round-``k`` trainer candidates in
   rank order and sends the model (:class:`AggregatedModel`, with its view) to the first ``s`` that answer.
2. A trainer of round ``k`` trains on it, pings the round-``k+1`` aggregator candidates and sends the result
   (:class:`TrainedModel`) to the first ``a`` that answer.
3. An aggregator of round ``k+1`` waits for ``ceil(success_fraction * s)`` trained models or
   ``aggregation_timeout`` seconds after the first, aggregates them with ``aggregator_rule`` (any rule of
   :mod:`phalanx.aggregation`; a robust rule filters Byzantine trainers) and goes to step 1 for ``k+1``.

Round 0's trainers need no aggregator: every node draws them from its initial view at ``start``.

**Availability.** A search pings up to as many candidates as it still needs, resends every ``ping_retry``
seconds, and replaces a candidate silent for ``ping_timeout`` by the next one in rank order; it settles on
the first ``need`` candidates, in rank order, that answered. A node itself, when drawn, needs no ping.

**Newer rounds win.** A node that receives the model of a round newer than the one it trains abandons that
training (its ``TrainingDone`` is ignored) and trains the newer one.

**Byzantine-robust variant (not in the paper).** Plain MoDeST trains on the first aggregate that arrives,
so one Byzantine aggregator can poison a round. With ``trainer_combine_rule`` set (e.g. ``"median"``) a
trainer waits for ``combine_quorum`` aggregates of the round (default ``a``) or ``aggregation_timeout`` and
combines them with that rule; with ``a >= 2 f_a + 1`` the coordinate-wise median of the aggregates lies
within the range of the honest ones.

**Evaluation.** A trainer reports ``RoundCompleted(round=k, params=model it trains from)``: the round-``k``
model as that trainer sees it (poisoned, in plain MoDeST, when a Byzantine aggregate arrived first).

**Membership.** Every model transfer carries the sender's recent view changes; pings refresh activity;
``join``/``leave`` announce to ``announce`` peers (see :mod:`phalanx.gossip.membership`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from phalanx.gossip.events import (
    Action,
    CancelTimer,
    PeerId,
    RoundCompleted,
    Send,
    SetTimer,
    Train,
    TrainingDone,
)
from phalanx.gossip.membership import View, ViewDelta
from phalanx.gossip.messages import (
    AggregatedModel,
    Join,
    Leave,
    Message,
    Ping,
    Pong,
    TrainedModel,
    ViewUpdate,
)
from phalanx.gossip.protocol import LocalProtocolError, Protocol
from phalanx.gossip.sampling import AGGREGATORS, TRAINERS, candidates, sample


@dataclass(frozen=True, slots=True, kw_only=True)
class ModestConfig:
    """MoDeST's parameters. Times are seconds on the runner's clock; ``inactivity`` counts rounds."""

    s: int = 10
    a: int = 1
    success_fraction: float = 1.0
    ping_timeout: float = 1.0
    ping_retry: float = 0.25
    aggregation_timeout: float = 5.0
    inactivity: int = 1000
    local_steps: int = 1
    aggregator_rule: str = "mean"
    aggregator_params: Mapping[str, Any] = field(default_factory=dict)
    trainer_combine_rule: str | None = None
    trainer_combine_params: Mapping[str, Any] = field(default_factory=dict)
    combine_quorum: int = 0
    view_window: int = 2
    announce: int = 3
    join_delay: int = 2
    rounds: int = 0
    progress_timeout: float = 10.0
    watch_limit: int = 3

    def __post_init__(self) -> None:
        if self.s < 1 or self.a < 1:
            raise ValueError(f"s and a must be >= 1, got s={self.s}, a={self.a}")
        if not 0 < self.success_fraction <= 1:
            raise ValueError(f"success_fraction must be in (0, 1], got {self.success_fraction}")
        if not (self.ping_timeout > 0 and self.ping_retry > 0 and self.aggregation_timeout > 0):
            raise ValueError("ping_timeout, ping_retry and aggregation_timeout must be > 0")
        if self.inactivity < 0 or self.local_steps < 0 or self.view_window < 0 or self.announce < 1:
            raise ValueError("inactivity, local_steps and view_window must be >= 0, announce >= 1")
        if not 0 <= self.combine_quorum <= self.a:
            raise ValueError(f"combine_quorum must be in [0, a], got {self.combine_quorum}")
        if self.join_delay < 1 or self.rounds < 0 or self.watch_limit < 0 or not self.progress_timeout > 0:
            raise ValueError("join_delay must be >= 1, rounds and watch_limit >= 0, progress_timeout > 0")

    @property
    def needed_models(self) -> int:
        return max(1, math.ceil(self.success_fraction * self.s - 1e-9))

    @property
    def quorum(self) -> int:
        return self.combine_quorum or self.a


def combine(rule: str, updates: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
    """Aggregate the rows of ``updates`` with a rule of :mod:`phalanx.aggregation`.

    "mean" and "median" (coordinate-wise) are computed here, so plain MoDeST needs nothing else.
    """
    if rule == "mean":
        return updates.mean(dim=0)
    if rule == "median" and not params:
        return updates.median(dim=0).values
    from phalanx.aggregation import aggregate

    return aggregate(rule, updates, **params)


@dataclass(slots=True)
class _Search:
    """Finding the first ``need`` available candidates of a round, then sending them ``payload``."""

    nonce: int
    round: int
    role: int  # 0: looking for trainers, 1: for aggregators
    need: int
    pool: Iterator[PeerId]
    payload: Message
    order: list[PeerId] = field(default_factory=list)
    state: dict[PeerId, str] = field(default_factory=dict)  # "wait" | "ok" | "fail"
    sent_at: dict[PeerId, float] = field(default_factory=dict)
    exhausted: bool = False
    has: set[PeerId] = field(default_factory=set)  # answered that they already hold the payload
    delivered: set[PeerId] = field(default_factory=set)
    progress: bool = False  # a chosen peer reported its part of the round done
    watches: int = 0

    def live(self) -> int:
        return sum(1 for p in self.order if self.state[p] != "fail")

    def pull(self) -> PeerId | None:
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
            if st == "wait":
                return None
            if st == "ok":
                picked.append(p)
                if len(picked) == self.need:
                    return picked
        return picked if self.exhausted else None


class Modest(Protocol):
    """One node running MoDeST. ``peers`` is the initial membership (the node included, unless joining).

    ``joining=True`` makes a node that is not yet a member: ``start`` announces a join to ``announce``
    of ``peers`` (its bootstrap peers), which answer with their full view.

    ``schedule`` is a churn trace for simulation: ``(time, "join" | "leave" | "crash")`` pairs carried out by
    the node's own timers (a crashed node goes silent without announcing anything; "join" after a leave or
    a crash rejoins). A node whose first event is a join starts outside the network. The real node leaves
    it empty.
    """

    def __init__(
        self,
        *,
        node: PeerId,
        params: torch.Tensor,
        peers: Sequence[PeerId],
        config: ModestConfig,
        rng: np.random.Generator,
        joining: bool = False,
        schedule: Sequence[tuple[float, str]] = (),
    ) -> None:
        self.node = node
        self.config = config
        self.rng = rng
        self.model = params.clone()
        self.view = View(node, () if joining else peers)
        self.bootstrap = tuple(p for p in peers if p != node)
        self.joining = joining
        if joining:
            for p in self.bootstrap:
                self.view.update(p, 0, 1, now_round=0)
        self.left = False
        self.round = -1  # newest round whose model this node has seen
        self.training: int | None = None  # round being trained
        self.started: int = -1  # newest round this node started training
        self.aggregated = -1  # newest round k+1 this node aggregated
        self._inbox: dict[int, dict[PeerId, torch.Tensor]] = {}  # trained models by their round k
        self._aggregates: dict[PeerId, torch.Tensor] = {}  # robust trainer: aggregates of self._collecting
        self._collecting = -1
        self._searches: dict[int, _Search] = {}
        self._nonce = 0
        self._last_sent = 0
        self.last_inputs: torch.Tensor | None = None  # the trainers' models of the latest aggregation
        self._schedule = sorted(schedule)
        # Peers that missed a ping in a round, skipped by this node's later searches until it sees them
        # active after that round (local, not gossiped: each node learns a crash at the cost of one timeout).
        self._suspects: dict[PeerId, int] = {}
        self.counters = {"pings": 0, "aggregations": 0, "trainings": 0, "abandoned": 0}

    # ------------------------------------------------------------------ helpers

    def _delta(self) -> ViewDelta:
        since = min(max(self.round, 0) - self.config.view_window, self._last_sent)
        self._last_sent = max(self.round, 0)
        return self.view.delta(since=since)

    def _search(self, k: int, role: bytes, need: int, payload: Message, now: float) -> list[Action]:
        self._nonce += 1
        pool = (
            p
            for p in candidates(self.view, k, inactivity=self.config.inactivity, role=role)
            if not self._suspected(p)
        )
        search = _Search(
            nonce=self._nonce, round=k, role=int(role == AGGREGATORS), need=need, pool=pool, payload=payload
        )
        self._searches[search.nonce] = search
        return self._fill(search, now)

    def _suspected(self, peer: PeerId) -> bool:
        since = self._suspects.get(peer)
        if since is None:
            return False
        rec = self.view.get(peer)
        if rec is not None and rec.last_active > since:
            del self._suspects[peer]
            return False
        return True

    def _fill(self, search: _Search, now: float) -> list[Action]:
        """Top up pending candidates to what is still needed, then deliver if settled."""
        actions: list[Action] = []
        while search.live() < search.need:
            peer = search.pull()
            if peer is None:
                break
            if peer == self.node:
                search.state[peer] = "ok"
                continue
            search.state[peer] = "wait"
            search.sent_at[peer] = now
            actions.append(Send(peer=peer, message=self._ping(search)))
        chosen = search.chosen()
        if chosen is None:
            actions.append(SetTimer(name=f"ping:{search.nonce}", deadline=now + self.config.ping_retry))
            return actions
        actions.append(CancelTimer(name=f"ping:{search.nonce}"))
        for peer in chosen:
            if peer in search.delivered or peer in search.has:
                continue
            search.delivered.add(peer)
            if peer == self.node:
                actions += self._deliver_local(search.payload, now)
            else:
                actions.append(Send(peer=peer, message=search.payload))
        # Watch the round: if every chosen peer dies before finishing its part, the next candidates get
        # the payload (a liveness guard MoDeST's paper leaves to timeouts at the receivers).
        if search.progress or search.watches >= self.config.watch_limit or chosen == [self.node]:
            del self._searches[search.nonce]
        else:
            actions.append(
                SetTimer(name=f"watch:{search.nonce}", deadline=now + self.config.progress_timeout)
            )
        return actions

    def _ping(self, search: _Search) -> Ping:
        self.counters["pings"] += 1
        return Ping(round=search.round, nonce=search.nonce, role=search.role)

    def _deliver_local(self, message: Message, now: float) -> list[Action]:
        if isinstance(message, TrainedModel):
            return self._on_trained(self.node, message, now)
        if isinstance(message, AggregatedModel):
            return self._on_aggregated(self.node, message, now)
        raise LocalProtocolError(f"cannot deliver {type(message).__name__} locally")

    # ------------------------------------------------------------------ the protocol

    def start(self, now: float) -> list[Action]:
        actions: list[Action] = [
            SetTimer(name=f"churn:{i}", deadline=t) for i, (t, _) in enumerate(self._schedule)
        ]
        if self._schedule and self._schedule[0][1] == "join":
            self.left = True  # not here yet: the schedule's first join brings the node in
            return actions
        return actions + self._begin(now)

    def _begin(self, now: float) -> list[Action]:
        if self.joining:
            return self._announce(Join(counter=self.view.counter(self.node) + 1), self.bootstrap)
        trainers = sample(self.view, 0, self.config.s, inactivity=self.config.inactivity, role=TRAINERS)
        if self.node in trainers:
            return self._start_training(0, self.model)
        return []

    def _announce(self, message: Join | Leave, pool: Sequence[PeerId]) -> list[Action]:
        if isinstance(message, Join):
            self.view.update(self.node, max(self.round, 0), message.counter, now_round=max(self.round, 0))
        else:
            self.view.update(self.node, 0, message.counter, now_round=max(self.round, 0))
        if not pool:
            return []
        count = min(self.config.announce, len(pool))
        picks = self.rng.choice(len(pool), size=count, replace=False)
        return [Send(peer=pool[int(i)], message=message) for i in sorted(picks)]

    def leave(self, now: float) -> list[Action]:
        """Leave the network: announce it and stop taking part (``join`` undoes it)."""
        if self.left:
            return []
        self.left = True
        self.training = None
        self._searches.clear()
        others = [p for p in self.view.active(max(self.round, 0), self.config.inactivity) if p != self.node]
        return self._announce(Leave(counter=self.view.counter(self.node) + 1), others)

    def join(self, now: float) -> list[Action]:
        """Join again after :meth:`leave`."""
        if not self.left:
            return []
        self.left = False
        others = [p for p in self.view.active(max(self.round, 0), self.config.inactivity) if p != self.node]
        return self._announce(Join(counter=self.view.counter(self.node) + 1), others or list(self.bootstrap))

    def resume(self, now: float) -> list[Action]:
        """Come back after the runner took this node away (the simulator's churn): join again."""
        return self.join(now)

    def _churn(self, event: str, now: float) -> list[Action]:
        if event == "leave":
            return self.leave(now)
        if event == "crash":
            self.left = True
            self.training = None
            self._searches.clear()
            return []
        if event == "join":
            if self.view.counter(self.node) == 0:  # never joined: announce to the bootstrap peers
                self.left = False
                self.joining = True
                return self._begin(now)
            if self.view.is_member(self.node):  # back from a crash: still a member; announce activity
                self.left = False
                self.view.update(
                    self.node,
                    max(self.round, 0),
                    self.view.counter(self.node) + 2,
                    now_round=max(self.round, 0),
                )
                return self._announce(Join(counter=self.view.counter(self.node)), list(self.bootstrap))
            return self.join(now)
        raise LocalProtocolError(f"unknown churn event {event!r}")

    def _start_training(self, k: int, params: torch.Tensor) -> list[Action]:
        if self.training is not None and self.training < k:
            self.counters["abandoned"] += 1
        self.round = max(self.round, k)
        self.training = k
        self.started = k
        self.model = params
        self.view.touch(self.node, k, now_round=k)
        self.counters["trainings"] += 1
        return [
            RoundCompleted(round=k, params=params),
            Train(round=k, params=params, steps=self.config.local_steps),
        ]

    def on_training_done(self, event: TrainingDone, now: float) -> list[Action]:
        if self.left or event.round != self.training:
            return []
        self.training = None
        k = event.round
        payload = TrainedModel(round=k, params=event.params, view=self._delta())
        return self._search(k + 1, AGGREGATORS, self.config.a, payload, now)

    def on_message(self, peer: PeerId, message: object, now: float) -> list[Action]:
        if isinstance(message, Ping):
            if self.left:
                return []
            self.view.touch(peer, message.round, now_round=max(self.round, 0))
            return [Send(peer=peer, message=self._pong(peer, message))]
        if isinstance(message, Pong):
            return self._on_pong(peer, message, now)
        if self.left:
            return []
        if isinstance(message, TrainedModel):
            return self._on_trained(peer, message, now)
        if isinstance(message, AggregatedModel):
            return self._on_aggregated(peer, message, now)
        if isinstance(message, Join):
            r = max(self.round, 0)
            rec = self.view.get(peer)
            self.view.update(peer, r + self.config.join_delay, message.counter, now_round=r)
            if rec is None or not rec.member or rec.counter < message.counter:
                return [Send(peer=peer, message=ViewUpdate(round=r, view=self.view.delta()))]
            return []
        if isinstance(message, Leave):
            rec = self.view.get(peer)
            self.view.update(
                peer, 0 if rec is None else rec.last_active, message.counter, now_round=max(self.round, 0)
            )
            return []
        if isinstance(message, ViewUpdate):
            self.view.merge(message.view, now_round=max(self.round, 0))
            self.round = max(self.round, message.round)
            return []
        return []

    def _pong(self, peer: PeerId, ping: Ping) -> Pong:
        k = ping.round
        if ping.role == 0:  # a trainer of round k is wanted: do I have round k's model, have I trained it?
            has = self.started >= k
            done = self.started > k or (has and self.training != k)
        else:  # an aggregator of round k: have I got the pinger's model of round k - 1, aggregated k?
            done = self.aggregated >= k
            has = done or peer in self._inbox.get(k - 1, {})
        return Pong(round=k, nonce=ping.nonce, has=has, done=done, latest=max(self.round, 0))

    def _on_pong(self, peer: PeerId, message: Pong, now: float) -> list[Action]:
        self.view.touch(peer, message.round, now_round=max(self.round, 0))
        self.round = max(self.round, message.latest)
        search = self._searches.get(message.nonce)
        if search is None or search.state.get(peer) != "wait":
            return []
        if search.watches and message.latest > search.round:  # the network is past the watched round
            del self._searches[search.nonce]
            return [CancelTimer(name=f"ping:{search.nonce}")]
        search.state[peer] = "ok"
        if message.has:
            search.has.add(peer)
        if message.done:
            search.progress = True
            if search.watches:  # watching, and the round has moved on: nothing left to guard
                del self._searches[search.nonce]
                return [CancelTimer(name=f"ping:{search.nonce}")]
        return self._fill(search, now)

    def on_timer(self, name: str, now: float) -> list[Action]:
        kind, _, arg = name.partition(":")
        if kind == "ping":
            search = self._searches.get(int(arg))
            if search is None:
                return []
            actions: list[Action] = []
            for peer in search.order:
                if search.state[peer] != "wait":
                    continue
                if now - search.sent_at[peer] >= self.config.ping_timeout - 1e-12:
                    search.state[peer] = "fail"
                    self._suspects[peer] = search.round
                else:
                    actions.append(Send(peer=peer, message=self._ping(search)))
            return actions + self._fill(search, now)
        if kind == "watch":
            search = self._searches.get(int(arg))
            if search is None:
                return []
            search.watches += 1
            actions = []
            for peer in search.order:
                if search.state[peer] == "ok" and peer != self.node:
                    search.state[peer] = "wait"
                    search.sent_at[peer] = now
                    actions.append(Send(peer=peer, message=self._ping(search)))
            return actions + self._fill(search, now)
        if kind == "aggregate":
            return self._aggregate(int(arg), now)
        if kind == "churn":
            return self._churn(self._schedule[int(arg)][1], now)
        if kind == "combine":
            if int(arg) == self._collecting and self._aggregates:
                return self._combine(now)
            return []
        return []

    # ------------------------------------------------------------------ aggregator

    def _on_trained(self, peer: PeerId, message: TrainedModel, now: float) -> list[Action]:
        k = message.round
        self.view.merge(message.view, now_round=max(self.round, 0))
        self.view.touch(peer, k, now_round=max(self.round, 0))
        if k + 1 <= self.aggregated or k + 1 < self.round:
            return []  # that round is already aggregated, or the network is past it (a late trainer)
        box = self._inbox.setdefault(k, {})
        first = not box
        box[peer] = message.params
        if len(box) >= self.config.needed_models:
            return self._aggregate(k, now)
        if first:
            return [SetTimer(name=f"aggregate:{k}", deadline=now + self.config.aggregation_timeout)]
        return []

    def _aggregate(self, k: int, now: float) -> list[Action]:
        box = self._inbox.pop(k, None)
        if not box or k + 1 <= self.aggregated:
            return []
        for old in [r for r in self._inbox if r < k]:
            del self._inbox[old]
        self.aggregated = k + 1
        self.round = max(self.round, k + 1)
        self.view.touch(self.node, k + 1, now_round=k + 1)
        self.counters["aggregations"] += 1
        updates = torch.stack([box[p] for p in sorted(box)])
        self.last_inputs = updates
        model = combine(self.config.aggregator_rule, updates, self.config.aggregator_params)
        payload = AggregatedModel(round=k + 1, params=model, view=self._delta())
        actions: list[Action] = [CancelTimer(name=f"aggregate:{k}")]
        if self.config.rounds and k + 1 >= self.config.rounds:
            return actions
        return actions + self._search(k + 1, TRAINERS, self.config.s, payload, now)

    # ------------------------------------------------------------------ trainer

    def _on_aggregated(self, peer: PeerId, message: AggregatedModel, now: float) -> list[Action]:
        k = message.round
        self.view.merge(message.view, now_round=max(self.round, 0))
        self.view.touch(peer, k, now_round=max(self.round, 0))
        if k <= self.started or k < self.round:
            return []  # already training this round (or a newer one), or a stale round
        if self.config.trainer_combine_rule is None:
            return self._start_training(k, message.params)
        if k < self._collecting:
            return []
        actions: list[Action] = []
        if k > self._collecting:
            self._collecting = k
            self._aggregates = {}
            actions.append(SetTimer(name=f"combine:{k}", deadline=now + self.config.aggregation_timeout))
        self._aggregates[peer] = message.params
        if len(self._aggregates) >= self.config.quorum:
            actions.append(CancelTimer(name=f"combine:{k}"))
            actions += self._combine(now)
        return actions

    def _combine(self, now: float) -> list[Action]:
        k = self._collecting
        rows = [self._aggregates[p] for p in sorted(self._aggregates)]
        self._aggregates = {}
        assert self.config.trainer_combine_rule is not None
        if len(rows) == 1:
            model = rows[0]
        else:
            stacked = torch.stack(rows)
            model = combine(self.config.trainer_combine_rule, stacked, self.config.trainer_combine_params)
        return self._start_training(k, model)


class ByzantineModest(Protocol):
    """A Byzantine MoDeST node: an honest :class:`Modest` inside, whose outgoing models are replaced.

    ``roles`` says when it attacks: as a ``"trainer"`` (the :class:`TrainedModel` it sends) and/or as an
    ``"aggregator"`` (the :class:`AggregatedModel` it sends). The attack vector comes from an attack of
    :mod:`phalanx.aggregation` applied to the honest vectors the node holds: as an aggregator, the trainers'
    models it just aggregated; as a trainer, its own trained model and the round's model. ``"silent"``
    sends no models at all (it still answers pings, so it is drawn and wastes the slot).

    A Byzantine aggregator is *rushing*: it aggregates (and sends its poison) as soon as the first trained
    model arrives instead of waiting for the success fraction, so its aggregate reaches the trainers first.
    """

    def __init__(
        self,
        inner: Modest,
        *,
        attack: str,
        attack_params: Mapping[str, Any] | None = None,
        roles: Sequence[str] = ("trainer", "aggregator"),
    ) -> None:
        bad = set(roles) - {"trainer", "aggregator"}
        if bad or not roles:
            raise ValueError(f"roles must be trainer and/or aggregator, got {tuple(roles)}")
        if "aggregator" in roles:
            inner.config = replace(inner.config, success_fraction=1 / inner.config.s)
        self.inner = inner
        self.attack = attack
        self.params = dict(attack_params or {})
        self.roles = frozenset(roles)
        self._cache: tuple[object, Message | None] | None = None
        self.sent = 0

    def start(self, now: float) -> list[Action]:
        return self._rewrite(self.inner.start(now))

    def on_message(self, peer: PeerId, message: object, now: float) -> list[Action]:
        return self._rewrite(self.inner.on_message(peer, message, now))

    def on_timer(self, name: str, now: float) -> list[Action]:
        return self._rewrite(self.inner.on_timer(name, now))

    def on_training_done(self, event: TrainingDone, now: float) -> list[Action]:
        return self._rewrite(self.inner.on_training_done(event, now))

    def resume(self, now: float) -> list[Action]:
        return self._rewrite(self.inner.resume(now))

    def leave(self, now: float) -> list[Action]:
        return self.inner.leave(now)

    def _rewrite(self, actions: list[Action]) -> list[Action]:
        out: list[Action] = []
        for action in actions:
            if isinstance(action, Send) and isinstance(action.message, TrainedModel | AggregatedModel):
                replaced = self._replace(action.message)
                if replaced is None:
                    continue
                self.sent += 1
                action = Send(peer=action.peer, message=replaced)
            out.append(action)
        return out

    def _replace(self, message: TrainedModel | AggregatedModel) -> Message | None:
        role = "trainer" if isinstance(message, TrainedModel) else "aggregator"
        if role not in self.roles:
            return message
        if self._cache is not None and self._cache[0] is message:
            return self._cache[1]
        result: Message | None
        if self.attack == "silent":
            result = None
        else:
            if role == "aggregator" and self.inner.last_inputs is not None:
                honest = self.inner.last_inputs
            else:
                honest = torch.stack([message.params, self.inner.model])
            vector = attack_vector(self.attack, honest, self.params)
            result = replace(message, params=vector.to(torch.float32).contiguous())
        self._cache = (message, result)
        return result


def attack_vector(name: str, honest: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
    """An attack of :mod:`phalanx.aggregation` (``ATTACKS``) on the (n, d) honest vectors."""
    from phalanx.aggregation import attack

    return attack(name, honest, **params)
