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

import heapq
from collections.abc import Callable, Sequence

import numpy as np
import torch

from phalanx.gossip.aggregator import is_finite
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
from phalanx.gossip.identity import Signer, Verifier
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
from phalanx.gossip.modest.admission import Gate
from phalanx.gossip.modest.config import ModestConfig
from phalanx.gossip.modest.roles import Added, Aggregator, RobustTrainer
from phalanx.gossip.modest.search import Phase, Role, Searches
from phalanx.gossip.protocol import LocalProtocolError, Protocol
from phalanx.gossip.sampling import AGGREGATORS, TRAINERS, candidates, ranking, sample


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
        signer: Signer | None = None,
        verifier: Verifier | None = None,
    ) -> None:
        self.node = node
        self.config = config
        self.rng = rng
        self.model = params.clone()
        # a member's activity claim is renewed every inactivity / 10 rounds: fresh enough for the activity
        # window, rare enough to keep signed records out of most view deltas
        self.view = View(
            node,
            () if joining else peers,
            signer=signer,
            verifier=verifier,
            refresh=max(1, config.inactivity // 10),
        )
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
            "rejected_not_sampled": 0,
            "rejected_unsolicited": 0,
            "rejected_record": 0,
        }
        self._asked: set[PeerId] = set()  # peers this node sent a Join to: their ViewUpdate answers it
        self._ahead: dict[PeerId, int] = {}  # members' claims of rounds newer than this node's
        self.gate = Gate(config.admission)

        self.searches = Searches(
            node=node, config=config, deliver_local=self._deliver_local, counters=self.counters
        )

    @property
    def finished(self) -> bool:
        """The run is over as far as this node knows: it holds (or aggregated, or saw ``round_witnesses``
        members vouch for) round ``rounds``, and no search of its own is still handing a model on (the final
        aggregate must reach round ``rounds``' trainers first). A node sampled in no late round never learns
        it: the runner stops it (``net up`` does, once the final round was reported)."""
        if not self.config.rounds or self.round < self.config.rounds:
            return False
        return all(search.phase is Phase.WATCHING for search in self.searches.active.values())

    def stats(self) -> dict[str, float]:
        out: dict[str, float] = dict(self.counters)
        out["rejected_record"] = self.view.rejected
        out["refused_admission"] = self.gate.refused
        verifier = self.view.verifier  # others' signed records it verified
        out["signatures_checked"] = verifier.checked if verifier is not None else 0
        combiners = [self.aggregator.combiner] + ([self.robust.combiner] if self.robust else [])
        out["rule_failures"] = sum(c.failures for c in combiners)
        out["dropped_nonfinite"] = sum(c.dropped_nonfinite for c in combiners)
        return out

    # ------------------------------------------------------------------ searches

    def _delta(self) -> ViewDelta:
        """The view changes sent with a model, and always this node's own record: a receiver that has not
        heard of this node yet (a joiner whose Join reached only its bootstrap peers) learns it from the
        model itself instead of refusing the model as "not sampled" (issue 14)."""
        since = min(max(self.round, 0) - self.config.view_window, self._last_sent)
        self._last_sent = max(self.round, 0)
        delta = self.view.delta(since=since)
        rec = self.view.get(self.node)
        if rec is None or self.node in delta.ids or (self.view.signed and not rec.sig):
            return delta
        active = rec.claim if self.view.signed else rec.last_active
        return ViewDelta(
            (*delta.ids, self.node),
            (*delta.active, active),
            (*delta.counters, rec.counter),
            (*delta.sigs, rec.sig) if delta.sigs or self.view.signed else (),
        )

    def _learn_sender(self, peer: PeerId, delta: ViewDelta) -> None:
        """Merge the sender's own record from a model's view delta before checking that the sender was
        sampled: the record is the sender's signed word for itself, checked like any other (signature,
        claim bound, admission), so a member that missed a joiner's Join still ranks it."""
        if peer in self.view and self.view.is_member(peer):
            return
        for p, active, counter, sig in delta.signed():
            if p == peer:
                self.view.accept(
                    p,
                    counter,
                    active,
                    sig,
                    now_round=max(self.round, 0),
                    max_claim=self._max_claim(),
                    admit=self._admit(peer),
                )
                return

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
            return self._announce(Join, self.view.counter(self.node) + 1, self.bootstrap)
        rec = self.view.get(self.node)
        if self.view.signed and rec is not None and rec.member and not rec.sig:
            # an initial member signs its record at once: the view a joiner gets (ViewUpdate) and the
            # sender's record every model carries hold only signed records, so an unsigned initial member
            # stayed unknown to joiners, which refused its models as "not sampled" (issue 14)
            self.view.own(rec.counter, rec.claim, now_round=max(self.round, 0))
        trainers = sample(self.view, 0, self.config.s, inactivity=self.config.inactivity, role=TRAINERS)
        if self.node in trainers:
            return self._start_training(0, self.model)
        return []

    def _announce(self, kind: type[Join] | type[Leave], counter: int, pool: Sequence[PeerId]) -> list[Action]:
        """Sign this node's new record (``counter``, this round) and announce it to ``announce`` of ``pool``."""
        r = max(self.round, 0)
        self.view.own(counter, r, now_round=r)
        rec = self.view.get(self.node)
        assert rec is not None
        message = kind(counter=counter, round=rec.claim, sig=rec.sig)
        if not pool:
            return []
        count = min(self.config.announce, len(pool))
        picks = [pool[int(i)] for i in sorted(self.rng.choice(len(pool), size=count, replace=False))]
        if kind is Join:
            self._asked.update(picks)
        return [Send(peer=peer, message=message) for peer in picks]

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
        return self._announce(Leave, self.view.counter(self.node) + 1, self._others())

    def join(self, now: float) -> list[Action]:
        """Join again after :meth:`leave`."""
        if not self.left:
            return []
        self.left = False
        return self._announce(Join, self.view.counter(self.node) + 1, self._others() or list(self.bootstrap))

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
        return self._announce(Join, self.view.counter(self.node) + 2, list(self.bootstrap))

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
        if isinstance(message, Join | Leave):
            return self._on_record(peer, message)
        if isinstance(message, ViewUpdate):
            return self._on_view_update(peer, message)
        return []

    def _admit(self, introducer: PeerId) -> Callable[[PeerId], bool]:
        """The admission check for newcomers whose records ``introducer`` forwards (or is)."""
        return lambda peer: self.gate.admit(peer, introducer, max(self.round, 0))

    def _max_claim(self) -> int:
        """The furthest round a received record may claim: a little past this node's round (a joiner's
        record claims its join delay ahead)."""
        return max(self.round, 0) + self.config.join_delay + self.config.max_round_step

    def _on_record(self, peer: PeerId, message: Join | Leave) -> list[Action]:
        """A peer's own signed record: it joins (again) or leaves. Only the peer can sign it."""
        r = max(self.round, 0)
        joining = isinstance(message, Join)
        accepted = self.view.accept(
            peer,
            message.counter,
            message.round,
            message.sig,
            now_round=r,
            max_claim=self._max_claim(),
            active_from=r + self.config.join_delay if joining else 0,
            admit=self._admit(peer),
        )
        if accepted is None:
            self.counters["rejected_record"] += 1
            return [PenalisePeer(peer=peer, reason="membership record without its owner's signature")]
        if joining and accepted:
            return [Send(peer=peer, message=ViewUpdate(round=r, view=self.view.delta()))]
        return []

    def _on_view_update(self, peer: PeerId, message: ViewUpdate) -> list[Action]:
        """The answer to this node's Join: the full view and the network's round. From a peer it did not
        ask, it is dropped; the round is adopted only as far as the signed records in the view vouch for."""
        if peer not in self._asked:
            self.counters["rejected_unsolicited"] += 1
            return [PenalisePeer(peer=peer, reason="view update nobody asked for")]
        self._asked.discard(peer)
        bound = message.round + self.config.join_delay + self.config.max_round_step
        self.view.merge(message.view, now_round=max(self.round, 0), max_claim=bound, admit=self._admit(peer))
        round_ = message.round
        if self.view.signed:
            # evidence: the round claimed by at least three distinct signed records (or all, if fewer)
            claims = sorted(
                (rec.claim for p, rec in self.view.records.items() if rec.sig and p != self.node),
                reverse=True,
            )
            vouched = claims[min(2, len(claims) - 1)] if claims else -1
            round_ = min(round_, vouched + self.config.max_round_step)
        self.round = max(self.round, round_)
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
        if not self.view.is_member(peer):
            self.counters["rejected_unsolicited"] += 1
            return []  # not a member: neither its round nor its answer counts
        self.view.touch(peer, message.round, now_round=max(self.round, 0))
        self._witness(peer, message.latest)
        return self.searches.on_pong(peer, message, now)

    def _witness(self, peer: PeerId, latest: int) -> None:
        """A member says the network reached round ``latest``. No one member's word moves this node:
        it adopts the newest round that ``round_witnesses`` distinct members vouch for."""
        if latest <= self.round:
            return
        ahead = self._ahead
        ahead[peer] = max(latest, ahead.get(peer, -1))
        need = min(self.config.round_witnesses, max(1, len(self.view) - 1))
        if len(ahead) < need:
            return
        vouched = heapq.nlargest(need, ahead.values())[-1]
        if vouched > self.round:
            self.round = vouched
            for p in [p for p, r in ahead.items() if r <= vouched]:
                del ahead[p]

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
        """Admission of an aggregated model, the same in both worlds: a non-finite one is dropped, counted
        and struck (the real node's wire refuses it too; the simulator has no wire)."""
        if is_finite(params):
            return None
        self.counters["rejected_nonfinite"] += 1
        return [] if peer == self.node else [PenalisePeer(peer=peer, reason="non-finite model")]

    def _sampled(self, peer: PeerId, k: int, tag: bytes, need: int) -> bool:
        """Whether ``peer`` ranks among the first ``need + sample_slack`` active candidates of round ``k``
        in this node's view: who may send a round's models (the slack covers candidates skipped because
        earlier ones did not answer, and views that differ a little)."""
        if peer == self.node:
            return True
        rec = self.view.get(peer)
        if rec is None or not rec.member:
            return False  # an outsider, or a peer that left
        limit = need + self.config.sample_slack
        oldest = k - self.config.inactivity
        seen = 0
        records = self.view.records
        # the ranking without the "not active before its join delay" bound: a sender the node has since
        # seen active in a later round still ranks where it did;        # a candidate this node found dead (a missed ping) does not count: the sender skipped it too
        for candidate in ranking(self.view.ids(), k, tag):
            other = records[candidate]
            if candidate == peer:
                return True
            if other.counter % 2 == 1 and other.last_active >= oldest:
                if self.searches.suspected(candidate, self.view):
                    continue
                seen += 1
                if seen >= limit:
                    break
        return False

    def _not_sampled(self, peer: PeerId, what: str) -> list[Action]:
        self.counters["rejected_not_sampled"] += 1
        return [PenalisePeer(peer=peer, reason=f"{what} from a peer not sampled for that round")]

    def _on_trained(self, peer: PeerId, message: TrainedModel, now: float) -> list[Action]:
        # a non-finite trained model is dropped and counted by the aggregator's rule (Combiner.of_rows)
        k = message.round
        self._learn_sender(peer, message.view)
        if not self._sampled(peer, k, TRAINERS, self.config.s):
            return self._not_sampled(peer, "trained model")
        self.view.merge(
            message.view, now_round=max(self.round, 0), max_claim=self._max_claim(), admit=self._admit(peer)
        )
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
        self._learn_sender(peer, message.view)
        if k < 1 or not self._sampled(peer, k, AGGREGATORS, self.config.a):
            return self._not_sampled(peer, "aggregated model")
        self.view.merge(
            message.view, now_round=max(self.round, 0), max_claim=self._max_claim(), admit=self._admit(peer)
        )
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
