"""One node running MoDeST (de Vos et al.): decentralized sampling of trainers and aggregators.

Round ``k`` has a sample of ``s`` trainers and ``a`` aggregators that every node computes alike from its
membership view (:mod:`phalanx.gossip.sampling`). The flow of one round:

1. An aggregator of round ``k`` holds the round-``k`` model; it pings the round-``k`` trainer candidates in
   rank order and sends the model (:class:`AggregatedModel`, with its view) to the first ``s`` that answer.
2. A trainer of round ``k`` trains on it, pings the round-``k+1`` aggregator candidates and sends the result
   (:class:`TrainedModel`) to the first ``a`` that answer.
3. An aggregator of round ``k+1`` waits for ``ceil(success_fraction * s)`` trained models or
   ``aggregation_timeout`` seconds after the first, aggregates them with ``aggregator_rule`` (any rule of
   :mod:`phalanx.aggregation`, through :class:`~phalanx.gossip.aggregator.Combiner`: non-finite models are
   dropped, and a rule that cannot run falls back to the median, both counted) and goes to step 1 for ``k+1``.

Round 0's trainers need no aggregator: every node draws them from its initial view at ``start``. With
``rounds = R`` the last aggregate (round ``R``) still goes to round ``R``'s trainers, which report it and
train no further.

**Availability.** A search (:mod:`~phalanx.gossip.modest.search`) pings up to as many candidates as it still
needs, resends every ``ping_retry`` seconds, and replaces a candidate silent for ``ping_timeout`` by the next
one in rank order; it settles on the first ``need`` candidates, in rank order, that answered.

**Newer rounds win.** A node that receives the model of a round newer than the one it trains abandons that
training (its ``TrainingDone`` is ignored) and trains the newer one.

**Byzantine-robust variant (not in the paper).** With ``trainer_combine_rule`` set (e.g. ``"median"``) a
trainer waits for ``combine_quorum`` aggregates of the round (default ``a``) or ``aggregation_timeout`` and
combines them with that rule; with ``a >= 2 f_a + 1`` the coordinate-wise median of the aggregates lies
within the range of the honest ones.

**Reports.** A trainer of round ``k + 1`` reports ``RoundCompleted(round=k, params=round k's aggregate)``
when it receives (or combines) it: round ``k``'s outcome, as that trainer sees it (poisoned, in plain MoDeST,
when a Byzantine aggregate arrived first). Only the sample reports a round (the spec says ``sampled``).

**Membership.** Every model transfer carries the sender's recent view changes; pings refresh activity;
``join``/``leave`` announce to ``announce`` peers (see :mod:`phalanx.gossip.membership`). The lifecycle:
``leave`` announces a departure; ``resume`` (the runner brings the node back) joins again, announces
activity after a silent absence, or, for a node built ``late``, joins for the first time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from phalanx.gossip.aggregator import Combiner
from phalanx.gossip.events import (
    Action,
    CancelTimer,
    PeerId,
    PenalisePeer,
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
from phalanx.gossip.modest import timers
from phalanx.gossip.modest.config import ModestConfig
from phalanx.gossip.modest.search import Candidate, Phase, Role, Search
from phalanx.gossip.protocol import LocalProtocolError, Protocol
from phalanx.gossip.sampling import AGGREGATORS, TRAINERS, candidates, sample


class Modest(Protocol):
    """One node running MoDeST. ``peers`` is the initial membership (the node included, unless joining).

    ``joining=True`` makes a node that is not yet a member: ``start`` announces a join to ``announce``
    of ``peers`` (its bootstrap peers), which answer with their full view. ``late=True`` makes a node that
    starts outside the network and joins the first time the runner resumes it (simulated churn).
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
        late: bool = False,
    ) -> None:
        self.node = node
        self.config = config
        self.rng = rng
        self.model = params.clone()
        self.view = View(node, () if joining else peers)
        self.bootstrap = tuple(p for p in peers if p != node)
        self.joining = joining
        self.late = late
        if joining:
            for p in self.bootstrap:
                self.view.update(p, 0, 1, now_round=0)
        self.left = False
        self.round = -1  # newest round whose model this node has seen
        self.training: int | None = None  # round being trained
        self.started: int = -1  # newest round this node started (trained, or received as the last one)
        self.aggregated = -1  # newest round k+1 this node aggregated
        self._inbox: dict[int, dict[PeerId, torch.Tensor]] = {}  # trained models by their round k
        self._aggregates: dict[PeerId, torch.Tensor] = {}  # robust trainer: aggregates of self._collecting
        self._collecting = -1
        self._searches: dict[int, Search] = {}
        self._nonce = 0
        self._last_sent = 0
        self.last_inputs: torch.Tensor | None = None  # the trainers' models of the latest aggregation
        self.aggregator = Combiner(config.aggregator_rule, config.aggregator_params, include_own=False)
        self.trainer_combiner = (
            Combiner(config.trainer_combine_rule, config.trainer_combine_params, include_own=False)
            if config.trainer_combine_rule
            else None
        )
        # Peers that missed a ping in a round, skipped by this node's later searches until it sees them
        # active after that round (local, not gossiped: each node learns a crash at the cost of one timeout).
        self._suspects: dict[PeerId, int] = {}
        self.counters = {
            "pings": 0,
            "aggregations": 0,
            "trainings": 0,
            "abandoned": 0,
            "rejected_nonfinite": 0,
        }

    def stats(self) -> dict[str, float]:
        out: dict[str, float] = dict(self.counters)
        combiners = [self.aggregator] + ([self.trainer_combiner] if self.trainer_combiner else [])
        out["rule_failures"] = sum(c.failures for c in combiners)
        out["dropped_nonfinite"] = sum(c.dropped_nonfinite for c in combiners)
        return out

    # ------------------------------------------------------------------ searches

    def _delta(self) -> ViewDelta:
        since = min(max(self.round, 0) - self.config.view_window, self._last_sent)
        self._last_sent = max(self.round, 0)
        return self.view.delta(since=since)

    def _search(self, k: int, role: Role, need: int, payload: Message, now: float) -> list[Action]:
        self._nonce += 1
        tag = AGGREGATORS if role is Role.AGGREGATORS else TRAINERS
        pool = (
            p
            for p in candidates(self.view, k, inactivity=self.config.inactivity, role=tag)
            if not self._suspected(p)
        )
        search = Search(nonce=self._nonce, round=k, role=role, need=need, pool=pool, payload=payload)
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

    def _ping_one(self, search: Search, peer: PeerId, now: float) -> Send:
        search.state[peer] = Candidate.WAITING
        search.sent_at[peer] = now
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
            actions.append(self._ping_one(search, peer, now))
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
                actions += self._deliver_local(search.payload, now)
            else:
                actions.append(Send(peer=peer, message=search.payload))
        # Watch the round: if every chosen peer dies before finishing its part, the next candidates get
        # the payload (a liveness guard MoDeST's paper leaves to timeouts at the receivers).
        if search.progress or search.watches >= self.config.watch_limit or chosen == [self.node]:
            del self._searches[search.nonce]
        else:
            actions.append(
                SetTimer(name=timers.watch(search.nonce), deadline=now + self.config.progress_timeout)
            )
        return actions

    def _deliver_local(self, message: Message, now: float) -> list[Action]:
        if isinstance(message, TrainedModel):
            return self._on_trained(self.node, message, now)
        if isinstance(message, AggregatedModel):
            return self._on_aggregated(self.node, message, now)
        raise LocalProtocolError(f"cannot deliver {type(message).__name__} locally")

    # ------------------------------------------------------------------ lifecycle

    def start(self, now: float) -> list[Action]:
        if self.late:
            self.left = True  # not here yet: the runner's first resume brings the node in
            return []
        return self._begin(now)

    def _begin(self, now: float) -> list[Action]:
        if self.joining:
            return self._announce(Join(counter=self.view.counter(self.node) + 1), self.bootstrap)
        trainers = sample(self.view, 0, self.config.s, inactivity=self.config.inactivity, role=TRAINERS)
        if self.node in trainers:
            return self._start_training(0, self.model)
        return []

    def _announce(self, message: Join | Leave, pool: Sequence[PeerId]) -> list[Action]:
        r = max(self.round, 0)
        self.view.update(self.node, r if isinstance(message, Join) else 0, message.counter, now_round=r)
        if not pool:
            return []
        count = min(self.config.announce, len(pool))
        picks = self.rng.choice(len(pool), size=count, replace=False)
        return [Send(peer=pool[int(i)], message=message) for i in sorted(picks)]

    def _others(self) -> list[PeerId]:
        return [p for p in self.view.active(max(self.round, 0), self.config.inactivity) if p != self.node]

    def _stand_down(self) -> None:
        self.training = None
        self._searches.clear()

    def leave(self, now: float) -> list[Action]:
        """Leave the network: announce it and stop taking part (``join`` undoes it)."""
        if self.left:
            return []
        self.left = True
        self._stand_down()
        return self._announce(Leave(counter=self.view.counter(self.node) + 1), self._others())

    def join(self, now: float) -> list[Action]:
        """Join again after :meth:`leave`."""
        if not self.left:
            return []
        self.left = False
        return self._announce(
            Join(counter=self.view.counter(self.node) + 1), self._others() or list(self.bootstrap)
        )

    def resume(self, now: float) -> list[Action]:
        """Back after the runner took this node away: join again after a ``leave``; after a silent absence
        (a crash) or a ``late`` start, announce activity as the member it still is (or, never having been
        one, join through the bootstrap peers)."""
        if self.left and not self.late:
            return self.join(now)
        self.late = self.left = False
        self._stand_down()  # whatever it was doing when it went silent is lost
        if self.view.counter(self.node) == 0:  # never joined: announce to the bootstrap peers
            self.joining = True
            return self._begin(now)
        r = max(self.round, 0)
        self.view.update(self.node, r, self.view.counter(self.node) + 2, now_round=r)
        return self._announce(Join(counter=self.view.counter(self.node)), list(self.bootstrap))

    # ------------------------------------------------------------------ messages and timers

    def on_training_done(self, event: TrainingDone, now: float) -> list[Action]:
        if self.left or event.round != self.training:
            return []
        self.training = None
        k = event.round
        payload = TrainedModel(round=k, params=event.params, view=self._delta())
        return self._search(k + 1, Role.AGGREGATORS, self.config.a, payload, now)

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

    def _pong(self, peer: PeerId, ping: Ping) -> Pong:
        k = ping.round
        if ping.role == Role.TRAINERS:  # a trainer of round k is wanted: have I round k's model, trained it?
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
        if search is None or search.state.get(peer) is not Candidate.WAITING:
            return []
        if search.watches and message.latest > search.round:  # the network is past the watched round
            del self._searches[search.nonce]
            return [CancelTimer(name=timers.ping(search.nonce))]
        search.state[peer] = Candidate.ANSWERED
        if message.has:
            search.has.add(peer)
        if message.done:
            search.progress = True
            if search.watches:  # watching, and the round has moved on: nothing left to guard
                del self._searches[search.nonce]
                return [CancelTimer(name=timers.ping(search.nonce))]
        return self._fill(search, now)

    def on_timer(self, name: str, now: float) -> list[Action]:
        timer = timers.parse(name)
        if timer is None:
            return []
        kind, arg = timer.kind, timer.arg
        if kind is timers.Kind.AGGREGATE:
            return self._aggregate(arg, now)
        if kind is timers.Kind.COMBINE:
            return self._combine(now) if arg == self._collecting and self._aggregates else []
        search = self._searches.get(arg)
        if search is None:
            return []
        actions: list[Action] = []
        if kind is timers.Kind.PING:
            for peer in search.waiting():
                if now - search.sent_at[peer] >= self.config.ping_timeout - 1e-12:
                    search.state[peer] = Candidate.FAILED
                    self._suspects[peer] = search.round
                else:
                    actions.append(self._ping_one(search, peer, search.sent_at[peer]))
        else:  # WATCH: ask the chosen peers again whether they finished their part
            search.watches += 1
            for peer in search.order:
                if search.state[peer] is Candidate.ANSWERED and peer != self.node:
                    actions.append(self._ping_one(search, peer, now))
        return actions + self._fill(search, now)

    # ------------------------------------------------------------------ aggregator role

    def _refuse(self, peer: PeerId, params: torch.Tensor) -> list[Action] | None:
        """Admission of a model, the same in both worlds: a non-finite one is dropped, counted and struck
        (the real node's wire refuses it too; the simulator has no wire)."""
        if bool(torch.isfinite(params.sum())) or bool(torch.isfinite(params).all()):
            return None
        self.counters["rejected_nonfinite"] += 1
        return [] if peer == self.node else [PenalisePeer(peer=peer, reason="non-finite model")]

    def _on_trained(self, peer: PeerId, message: TrainedModel, now: float) -> list[Action]:
        refused = self._refuse(peer, message.params)
        if refused is not None:
            return refused
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
            return [SetTimer(name=timers.aggregate(k), deadline=now + self.config.aggregation_timeout)]
        return []

    def _aggregate(self, k: int, now: float) -> list[Action]:
        box = self._inbox.pop(k, None)
        if not box or k + 1 <= self.aggregated:
            return []
        for old in [r for r in self._inbox if r < k]:
            del self._inbox[old]
        model = self.aggregator.of_rows(box)
        actions: list[Action] = [CancelTimer(name=timers.aggregate(k))]
        if model is None:  # every trained model was non-finite: nothing to hand on (counted)
            return actions
        self.aggregated = k + 1
        self.round = max(self.round, k + 1)
        self.view.touch(self.node, k + 1, now_round=k + 1)
        self.counters["aggregations"] += 1
        self.last_inputs = torch.stack([box[p] for p in sorted(box)])
        payload = AggregatedModel(round=k + 1, params=model, view=self._delta())
        return actions + self._search(k + 1, Role.TRAINERS, self.config.s, payload, now)

    # ------------------------------------------------------------------ trainer role

    def _on_aggregated(self, peer: PeerId, message: AggregatedModel, now: float) -> list[Action]:
        refused = self._refuse(peer, message.params)
        if refused is not None:
            return refused
        k = message.round
        self.view.merge(message.view, now_round=max(self.round, 0))
        self.view.touch(peer, k, now_round=max(self.round, 0))
        if k <= self.started or k < self.round:
            return []  # already training this round (or a newer one), or a stale round
        if self.trainer_combiner is None:
            return self._start_training(k, message.params)
        if k < self._collecting:
            return []
        actions: list[Action] = []
        if k > self._collecting:
            self._collecting = k
            self._aggregates = {}
            actions.append(SetTimer(name=timers.combine(k), deadline=now + self.config.aggregation_timeout))
        self._aggregates[peer] = message.params
        if len(self._aggregates) >= self.config.quorum:
            actions.append(CancelTimer(name=timers.combine(k)))
            actions += self._combine(now)
        return actions

    def _combine(self, now: float) -> list[Action]:
        k = self._collecting
        received, self._aggregates = self._aggregates, {}
        assert self.trainer_combiner is not None
        model = self.trainer_combiner.of_rows(received)
        if model is None:
            return []
        return self._start_training(k, model)

    def _start_training(self, k: int, params: torch.Tensor) -> list[Action]:
        """Take round ``k``'s model: report round ``k - 1``'s outcome, then train (unless the run is over)."""
        if self.training is not None and self.training < k:
            self.counters["abandoned"] += 1
        self.round = max(self.round, k)
        self.started = k
        self.model = params
        self.view.touch(self.node, k, now_round=k)
        actions: list[Action] = []
        if k > 0:
            actions.append(RoundCompleted(round=k - 1, params=params))
        if self.config.rounds and k >= self.config.rounds:
            self.training = None
            return actions
        self.training = k
        self.counters["trainings"] += 1
        actions.append(Train(round=k, params=params, steps=self.config.local_steps))
        return actions
