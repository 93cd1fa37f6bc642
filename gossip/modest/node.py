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
from phalanx.gossip.modest.roles import Added, Aggregator, RobustTrainer
from phalanx.gossip.modest.search import Role, Searches
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
        self.aggregator = Aggregator(config)
        rule = config.trainer_combine_rule
        self.robust = RobustTrainer(config, rule) if rule else None
        self._last_sent = 0
        self.counters = {
            "pings": 0,
            "aggregations": 0,
            "trainings": 0,
            "abandoned": 0,
            "rejected_nonfinite": 0,
        }

        self.searches = Searches(
            node=node, config=config, deliver_local=self._deliver_local, counters=self.counters
        )

    def stats(self) -> dict[str, float]:
        out: dict[str, float] = dict(self.counters)
        combiners = [self.aggregator.combiner] + ([self.robust.combiner] if self.robust else [])
        out["rule_failures"] = sum(c.failures for c in combiners)
        out["dropped_nonfinite"] = sum(c.dropped_nonfinite for c in combiners)
        return out

    # ------------------------------------------------------------------ searches

    def _delta(self) -> ViewDelta:
        since = min(max(self.round, 0) - self.config.view_window, self._last_sent)
        self._last_sent = max(self.round, 0)
        return self.view.delta(since=since)

    def _search(self, k: int, role: Role, need: int, payload: Message, now: float) -> list[Action]:
        tag = AGGREGATORS if role is Role.AGGREGATORS else TRAINERS
        pool = (
            p
            for p in candidates(self.view, k, inactivity=self.config.inactivity, role=tag)
            if not self.searches.suspected(p, self.view)
        )
        return self.searches.begin(k, role, need, pool, payload, now)

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
        self.searches.clear()

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
            done = self.aggregator.aggregated >= k
            has = done or self.aggregator.holds(peer, k - 1)
        return Pong(round=k, nonce=ping.nonce, has=has, done=done, latest=max(self.round, 0))

    def _on_pong(self, peer: PeerId, message: Pong, now: float) -> list[Action]:
        self.view.touch(peer, message.round, now_round=max(self.round, 0))
        self.round = max(self.round, message.latest)
        return self.searches.on_pong(peer, message, now)

    def on_timer(self, name: str, now: float) -> list[Action]:
        timer = timers.parse(name)
        if timer is None:
            return []
        kind, arg = timer.kind, timer.arg
        if kind is timers.Kind.AGGREGATE:
            return self._aggregate(arg, now)
        if kind is timers.Kind.COMBINE:
            return self._combine(now) if self.robust is not None and self.robust.pending(arg) else []
        return self.searches.on_timer(timer, now)

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
        added = self.aggregator.add(peer, k, message.params, network_round=self.round)
        if added is Added.ENOUGH:
            return self._aggregate(k, now)
        if added is Added.FIRST:
            return [SetTimer(name=timers.aggregate(k), deadline=now + self.config.aggregation_timeout)]
        return []

    def _aggregate(self, k: int, now: float) -> list[Action]:
        actions: list[Action] = [CancelTimer(name=timers.aggregate(k))]
        model = self.aggregator.aggregate(k)
        if model is None:
            return [] if k + 1 <= self.aggregator.aggregated else actions
        self.round = max(self.round, k + 1)
        self.view.touch(self.node, k + 1, now_round=k + 1)
        self.counters["aggregations"] += 1
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
        if self.robust is None:
            return self._start_training(k, message.params)
        added = self.robust.add(peer, k, message.params)
        if added is Added.STALE:
            return []
        actions: list[Action] = []
        if added is Added.FIRST:
            actions.append(SetTimer(name=timers.combine(k), deadline=now + self.config.aggregation_timeout))
        if added is Added.ENOUGH:
            actions.append(CancelTimer(name=timers.combine(k)))
            actions += self._combine(now)
        return actions

    def _combine(self, now: float) -> list[Action]:
        assert self.robust is not None
        k, model = self.robust.combine()
        return [] if model is None else self._start_training(k, model)

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
