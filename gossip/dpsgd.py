"""The D-PSGD family as a sans-I/O state machine: train, send to neighbours, wait, combine, repeat.

One round ``r`` of :class:`DPSGD` (Lian et al., 2017), as the runner sees it:

1. ``Train(r, x, local_steps)``; the runner answers ``TrainingDone(r, x')``.
2. ``Send(peer, ModelUpdate(r, x', step=0))`` to every neighbour (one message object for all of them),
   and ``SetTimer("dpsgd/r/0", now + round_timeout)``.
3. ``ModelUpdate`` messages for ``(r, 0)`` arrive. When every neighbour that is not known to be down has
   answered, or the timer fires, the node combines its own vector with the ones that arrived using the
   configured rule (:class:`~phalanx.gossip.aggregator.Combiner`: D-PSGD mixing for ``mean``, any robust
   or gossip rule of :mod:`phalanx.aggregation` otherwise).
4. With ``gossip_steps = Q > 1`` (DFedSAM-MGS), steps 2-3 repeat Q times on the combined vector
   (messages carry ``step = 1 .. Q-1``) before the round ends.
5. ``RoundCompleted(r, x'')`` and ``Train(r + 1, x'', local_steps)``.

Momentum and SAM (DFedSAM) are local-optimiser settings of the learner that runs ``Train``; the protocol
only decides what gets trained, sent and mixed.

Messages for a later exchange (a faster neighbour is ahead) are kept until their exchange comes, up to
``max_ahead`` rounds ahead. A node that fell further behind (a stall, a decode bomb, a long pause)
resynchronises: once a majority of its neighbours sent models of rounds beyond that window, it jumps to the
lowest of their rounds and mixes their models of that round, as a rejoining node does (one neighbour's round
alone never moves it). A message for an exchange that is already over is dropped, never mixed in;
a second message from the same peer for the same exchange is dropped (the first one counts). Messages
from peers that are not neighbours in that round are dropped and reported with ``PenalisePeer``.

**A changing overlay** (a node that joined through a bootstrap peer, ``--degree K``). The runner may hand
the node new neighbours between rounds with :meth:`DPSGD.set_peers` (uniform weights ``1 / (deg + 1)``; a
neighbour added during an exchange gets the node's current model at once, one removed stops counting), and
may set ``inbound``, a predicate on peers (the runner's verified members): a model from a peer that is not
a neighbour but passes it makes that peer a neighbour (up to ``max_degree``), so the graph of who picked
whom becomes an undirected one; a model from a peer that does not pass it is dropped and counted as a
stranger's, without a penalty (its signed record may still be on its way). A static ``schedule`` cannot change this way.

The protocol never modifies a tensor it received or handed out, so a runner may share them (one message
object sent to many neighbours, no copies).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

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
from phalanx.gossip.messages import ModelUpdate
from phalanx.gossip.protocol import LocalProtocolError, Protocol
from phalanx.gossip.spec import NodeContext, NoParams, ProtocolSpec, RunSettings, WorldDefaults

Weights = Mapping[PeerId, float]


def uniform_weights(neighbours: tuple[PeerId, ...]) -> dict[PeerId, float]:
    """1 / (deg + 1) for each neighbour (and, implicitly, for the node itself)."""
    w = 1.0 / (len(neighbours) + 1)
    return {p: w for p in neighbours}


@dataclass(frozen=True, slots=True, kw_only=True)
class DPSGDConfig:
    """Settings of one node's D-PSGD.

    Args:
        neighbours: the peers this node exchanges models with.
        weights: mixing weight of each neighbour (the node's own weight is one minus their sum);
            ``None`` means uniform ``1 / (deg + 1)``. Only ``mean`` and the gossip rules use them.
        rule: an aggregation rule name (``mean`` is D-PSGD's weighted mixing).
        rule_params: keyword parameters of the rule (``f``, ``tau``, ...).
        local_steps: local SGD steps per round (>= 0).
        gossip_steps: Q, exchanges per round (>= 1).
        round_timeout: seconds to wait for neighbours' models in one exchange (> 0).
        rounds: stop after this many rounds; 0 runs until the runner stops.
        max_ahead: keep messages up to this many rounds ahead of the node's own round.
        schedule: time-varying topology: ``schedule(r)`` gives round r's neighbour -> weight map and
            overrides ``neighbours``/``weights`` (every node must compute the same graph from a shared seed).
        include_own: ordinary (non-gossip) rules aggregate the node's own vector with the received ones;
            ``False`` aggregates the received ones only.
    """

    neighbours: tuple[PeerId, ...]
    weights: Weights | None = None
    rule: str = "mean"
    rule_params: Mapping[str, Any] = field(default_factory=dict)
    local_steps: int = 1
    gossip_steps: int = 1
    round_timeout: float = 10.0
    rounds: int = 0
    max_ahead: int = 2
    schedule: Callable[[int], Weights] | None = None
    include_own: bool = True

    def __post_init__(self) -> None:
        if self.local_steps < 0:
            raise ValueError(f"local_steps must be >= 0, got {self.local_steps}")
        if self.gossip_steps < 1:
            raise ValueError(f"gossip_steps must be >= 1, got {self.gossip_steps}")
        if not self.round_timeout > 0:
            raise ValueError(f"round_timeout must be > 0, got {self.round_timeout}")
        if self.rounds < 0 or self.max_ahead < 0:
            raise ValueError("rounds and max_ahead must be >= 0")
        if len(set(self.neighbours)) != len(self.neighbours):
            raise ValueError("neighbours must be distinct")
        if self.weights is not None:
            if set(self.weights) != set(self.neighbours):
                raise ValueError("weights must name exactly the neighbours")
            total = sum(self.weights.values())
            if any(w < 0 for w in self.weights.values()) or total > 1 + 1e-6:
                raise ValueError("mixing weights must be >= 0 and sum to at most 1")


@dataclass(slots=True)
class DPSGDStats:
    """Counters a runner may read and log."""

    received: int = 0
    mixed: int = 0
    late: int = 0
    too_early: int = 0
    duplicates: int = 0
    strangers: int = 0
    timeouts: int = 0
    resyncs: int = 0


class DPSGD(Protocol):
    """One node's D-PSGD (see the module docstring). ``params`` is the initial model vector."""

    def __init__(
        self,
        config: DPSGDConfig,
        params: torch.Tensor,
        *,
        start_round: int = 0,
        combiner: Combiner | None = None,
    ) -> None:
        if params.dtype != torch.float32 or params.dim() != 1:
            raise TypeError("params must be a 1-D float32 tensor")
        self.config = config
        self.combiner = combiner or Combiner(config.rule, config.rule_params, include_own=config.include_own)
        self.params = params
        self._dim = params.numel()  # every vector this node trains, sends or mixes has this length
        self.round = start_round
        self.step = 0
        self.phase = "idle"  # idle -> train -> gossip (-> train ...) -> done; sync after resume()
        self.counters = DPSGDStats()
        self._inbox: dict[tuple[int, int], dict[PeerId, torch.Tensor]] = {}
        self._down: set[PeerId] = set()
        self._static = (
            dict(config.weights) if config.weights is not None else uniform_weights(config.neighbours)
        )
        self._weights_cache: tuple[int, Weights] | None = None
        self._static_peers = tuple(self._static)
        self._timer: tuple[int, int, str] = (-1, -1, "")  # (round, step, name) of the last timer_name
        self._far: dict[PeerId, tuple[int, torch.Tensor]] = {}  # neighbours' models beyond max_ahead
        # a changing overlay (see the module docstring): who may become a neighbour by sending a model
        self.inbound: Callable[[PeerId], bool] | None = None
        self.max_degree = 0  # 0: no bound on neighbours taken in through ``inbound``
        self._latest: dict[PeerId, int] = {}  # newest round each neighbour sent (changing overlay only)
        self._probation: set[PeerId] = set()  # new neighbours not caught up yet (changing overlay only)

    # ------------------------------------------------------------------ helpers

    def weights_at(self, round: int) -> Weights:
        """Neighbour -> mixing weight in ``round``."""
        if self.config.schedule is None:
            return self._static
        if self._weights_cache is None or self._weights_cache[0] != round:
            self._weights_cache = (round, self.config.schedule(round))
        return self._weights_cache[1]

    def neighbours_at(self, round: int) -> tuple[PeerId, ...]:
        if self.config.schedule is None:
            return self._static_peers
        return tuple(self.weights_at(round))

    @property
    def timer_name(self) -> str:
        if self._timer[0] != self.round or self._timer[1] != self.step:
            self._timer = (self.round, self.step, f"dpsgd/{self.round}/{self.step}")
        return self._timer[2]

    def _begin_training(self) -> list[Action]:
        if self.config.rounds and self.round >= self.config.rounds:
            self.phase = "done"
            return []
        self.phase = "train"
        self.step = 0
        return [Train(round=self.round, params=self.params, steps=self.config.local_steps)]

    def _exchange(self, now: float) -> list[Action]:
        """Send the current vector for (round, step) and wait; finish at once if everything is in."""
        self.phase = "gossip"
        message = ModelUpdate(round=self.round, step=self.step, params=self.params)
        actions: list[Action] = [Send(peer=p, message=message) for p in self.neighbours_at(self.round)]
        actions.append(SetTimer(name=self.timer_name, deadline=now + self.config.round_timeout))
        if self._complete():
            actions.extend(self._finish_exchange(now, timed_out=False))
        return actions

    def _complete(self) -> bool:
        return self._box_complete(self._inbox.get((self.round, self.step), {}), self.weights_at(self.round))

    def _box_complete(self, box: Mapping[PeerId, torch.Tensor], neighbours: Weights) -> bool:
        """Whether ``box`` holds a model of every neighbour not known to be down. The inbox only ever holds
        models from the round's neighbours (on_message refuses others), so a full box is a complete one;
        only with peers known to be down must each neighbour be looked at."""
        if len(box) >= len(neighbours):
            return True
        if self.inbound is not None:  # a changing overlay: see _excused (at least one model, or the timer)
            return bool(box) and all(p in box or self._excused(p) for p in neighbours)
        return bool(self._down) and all(p in box or p in self._down for p in neighbours)

    def _excused(self, peer: PeerId) -> bool:
        """On a changing overlay, a neighbour the exchange need not wait for: down, already past this round
        (it sent a later one: this round's model will never come), more than ``max_ahead`` rounds behind (it
        will resynchronise, not send this round), never heard from (not started yet), or new and not caught
        up yet (it sent no model of this round or later since it became a neighbour). The exchange still
        needs one model (or its timer): with every neighbour excused a node would otherwise run alone. Without this a node that joins behind
        the network would hold up each of its neighbours for a round timeout, round after round."""
        if peer in self._down or peer in self._probation:
            return True
        latest = self._latest.get(peer)
        if latest is None:
            return True  # never heard from: not started yet, or gone (the overlay replaces it)
        # past this round, or so far behind that it will resynchronise rather than send this round's model
        return latest > self.round or latest < self.round - self.config.max_ahead

    def _finish_exchange(self, now: float, *, timed_out: bool) -> list[Action]:
        key = (self.round, self.step)
        got = self._inbox.pop(key, {})
        actions: list[Action] = [] if timed_out else [CancelTimer(name=self.timer_name)]
        if timed_out:
            self.counters.timeouts += 1
        weights = self.weights_at(self.round)
        self.params = self.combiner(self.params, got, weights)
        self.counters.mixed += len(got)
        if self.step + 1 < self.config.gossip_steps:
            self.step += 1
            actions.extend(self._exchange(now))
            return actions
        actions.append(
            RoundCompleted(round=self.round, params=self.params, received=len(got), accepted=len(got))
        )
        self.round += 1
        # Drop whatever is left for exchanges that are now over.
        if self._inbox:
            for old in [k for k in self._inbox if k[0] < self.round]:
                del self._inbox[old]
        actions.extend(self._begin_training())
        return actions

    def set_peers(self, peers: Sequence[PeerId], now: float) -> list[Action]:
        """Use ``peers`` as the neighbours from now on, with uniform weights (see the module docstring)."""
        if self.config.schedule is not None:
            raise LocalProtocolError("a node on a time-varying schedule cannot change its neighbours")
        new = tuple(sorted(set(peers)))
        added = [p for p in new if p not in self._static]
        if self.inbound is not None:
            self._probation.update(added)
            self._probation &= set(new)
        self._static = uniform_weights(new)
        self._static_peers = new
        for box in self._inbox.values():  # a removed neighbour's models no longer count
            for gone in [p for p in box if p not in self._static]:
                del box[gone]
        self._far = {p: v for p, v in self._far.items() if p in self._static}
        if self.phase != "gossip":
            return []
        message = ModelUpdate(round=self.round, step=self.step, params=self.params)
        actions: list[Action] = [Send(peer=p, message=message) for p in added]
        if self._complete():
            actions.extend(self._finish_exchange(now, timed_out=False))
        return actions

    def _take_inbound(self, peer: PeerId, now: float) -> list[Action] | None:
        """A model from a non-neighbour: the actions of making it a neighbour, or None when it may not be."""
        if self.inbound is None or self.config.schedule is not None or not self.inbound(peer):
            return None
        if self.max_degree and len(self._static) >= self.max_degree:
            return None
        return self.set_peers((*self._static_peers, peer), now)

    # ------------------------------------------------------------------ events

    def start(self, now: float) -> list[Action]:
        if self.phase != "idle":
            raise LocalProtocolError("start() called twice")
        return self._begin_training()

    def on_training_done(self, event: TrainingDone, now: float) -> list[Action]:
        if self.phase != "train" or event.round != self.round:
            return []  # stale: the runner finished training we no longer want
        if event.params.shape != (self._dim,):
            raise LocalProtocolError(
                f"trained vector has shape {tuple(event.params.shape)}, expected {tuple(self.params.shape)}"
            )
        self.params = event.params
        return self._exchange(now)

    def on_message(self, peer: PeerId, message: object, now: float) -> list[Action]:
        if not isinstance(message, ModelUpdate):
            self.counters.strangers += 1
            return [PenalisePeer(peer=peer, reason=f"unexpected message {type(message).__name__}")]
        if self.phase == "sync":
            if message.step != 0 or peer not in self.weights_at(message.round) or message.round < self.round:
                return []
            # Back from an absence: join the round the neighbours are in.
            self.round = message.round
            self._inbox = {(message.round, 0): {peer: message.params}}
            self.counters.received += 1
            return self._begin_training()
        # A model from a member that is not a neighbour yet makes it one (a changing overlay), even when the
        # model itself is late: a node that just joined sends round 0 to peers far ahead, which must answer.
        taken: list[Action] = []
        if self.inbound is not None and peer not in self._static:
            inbound = self._take_inbound(peer, now)
            if inbound is None:
                # not (yet) a verified member, or this node is full: dropped and counted, not a strike (its
                # signed record may still be on its way through the membership exchange)
                self.counters.strangers += 1
                return []
            taken = inbound
        # Every message of every neighbour comes through here: plain int comparisons, no tuples.
        round_, step, current, phase = message.round, message.step, self.round, self.phase
        if self.inbound is not None and peer in self._static:
            taken = [*taken, *self._caught_up(peer, round_, now)]
            if self.round != current:  # that finished the exchange: the message meets the new round
                return [*taken, *self.on_message(peer, message, now)]
        if (
            round_ < current
            or (round_ == current and phase == "gossip" and step < self.step)
            or phase == "done"
        ):
            self.counters.late += 1  # for an exchange that is over
            return taken
        config = self.config
        if round_ > current + config.max_ahead or step >= config.gossip_steps:
            self.counters.too_early += 1
            if step == 0 and round_ > current + config.max_ahead:
                return [*taken, *self._resync(peer, round_, message.params, now)]
            return taken
        weights = self._static if config.schedule is None else self.weights_at(round_)
        if peer not in weights:
            self.counters.strangers += 1
            return [PenalisePeer(peer=peer, reason="model from a peer that is not a neighbour in that round")]
        params = message.params
        if params.numel() != self._dim:  # both are 1-D (ModelUpdate checks its own)
            return [*taken, PenalisePeer(peer=peer, reason="model of the wrong dimension")]
        key = (round_, step)
        box = self._inbox.get(key)
        if box is None:
            box = self._inbox[key] = {}
        elif peer in box:
            self.counters.duplicates += 1
            return taken
        box[peer] = params
        self.counters.received += 1
        if phase == "gossip" and round_ == current and step == self.step and self._box_complete(box, weights):
            return [*taken, *self._finish_exchange(now, timed_out=False)]
        return taken

    def _caught_up(self, peer: PeerId, round_: int, now: float) -> list[Action]:
        """Note a neighbour's round (changing overlay); finish the exchange if that excuses the last one."""
        if round_ <= self._latest.get(peer, -1):
            return []
        self._latest[peer] = round_
        if round_ >= self.round:
            self._probation.discard(peer)
        if self.phase == "gossip" and round_ > self.round and self._complete():
            return self._finish_exchange(now, timed_out=False)
        return []

    def _resync(self, peer: PeerId, round_: int, params: torch.Tensor, now: float) -> list[Action]:
        """A neighbour is far ahead; with a majority of the neighbours there, jump to the lowest of their
        rounds and mix their models of that round (see the module docstring)."""
        neighbours = self.weights_at(self.round)
        if peer not in neighbours or params.numel() != self._dim:
            return []
        self._far[peer] = (round_, params)
        horizon = self.round + self.config.max_ahead
        for stale in [p for p, (r, _) in self._far.items() if p not in neighbours or r <= horizon]:
            del self._far[stale]  # no longer a neighbour, or no longer far ahead: never a step back
        voters = len(neighbours)
        if self.inbound is not None:
            # a changing overlay: neighbours never heard from (not started, or gone) do not vote
            voters = sum(1 for p in neighbours if p in self._latest and p not in self._down)
        if 2 * len(self._far) <= voters:
            return []
        target = min(r for r, _ in self._far.values())
        actions: list[Action] = [CancelTimer(name=self.timer_name)] if self.phase == "gossip" else []
        self.round, self.step = target, 0
        self._inbox = {(target, 0): {p: v for p, (r, v) in self._far.items() if r == target}}
        self._far.clear()
        self.counters.resyncs += 1
        return actions + self._begin_training()

    def on_timer(self, name: str, now: float) -> list[Action]:
        if self.phase != "gossip" or name != self.timer_name:
            return []  # a timer of an exchange that already finished
        return self._finish_exchange(now, timed_out=True)

    def on_peer_down(self, peer: PeerId, now: float) -> list[Action]:
        self._down.add(peer)
        if self.phase == "gossip" and peer in self.weights_at(self.round) and self._complete():
            return self._finish_exchange(now, timed_out=False)
        return []

    def on_peer_up(self, peer: PeerId, now: float) -> list[Action]:
        self._down.discard(peer)
        return []

    def resume(self, now: float) -> list[Action]:
        """The node was away (events meant for it were lost): wait for a neighbour's model and join its
        round. A neighbour can make the node skip rounds this way, never go back."""
        if self.phase == "done":
            return []
        self.phase = "sync"
        self._inbox.clear()
        return []

    # ------------------------------------------------------------------ introspection

    def pending(self) -> int:
        """Messages held for exchanges that have not happened yet."""
        return sum(len(box) for box in self._inbox.values())

    @property
    def finished(self) -> bool:
        """All ``rounds`` rounds mixed (never, with ``rounds = 0``)."""
        return bool(self.config.rounds) and self.round >= self.config.rounds

    def stats(self) -> dict[str, float]:
        s = self.counters
        return {
            "received": s.received,
            "mixed": s.mixed,
            "rejected_late": s.late,
            "rejected_too_early": s.too_early,
            "rejected_duplicate": s.duplicates,
            "rejected_stranger": s.strangers,
            "timeouts": s.timeouts,
            "resyncs": s.resyncs,
            "rule_failures": self.combiner.failures,
            "dropped_nonfinite": self.combiner.dropped_nonfinite,
        }


# ---------------------------------------------------------------- registry entry


def _configure(settings: RunSettings, params: NoParams, world: WorldDefaults) -> DPSGDConfig:
    """The run-wide part of every node's config; :func:`_build` adds the node's neighbours."""
    return DPSGDConfig(
        neighbours=(),
        rule=settings.rule,
        rule_params=settings.rule_params,
        local_steps=settings.local_steps,
        gossip_steps=settings.gossip_steps,
        round_timeout=settings.round_timeout,
        rounds=settings.rounds,
    )


def _build(ctx: NodeContext, config: DPSGDConfig) -> DPSGD:
    node_config = replace(
        config,
        neighbours=ctx.neighbours,
        weights=ctx.weights,
        schedule=ctx.schedule,
        include_own=ctx.include_own,
    )
    return DPSGD(node_config, ctx.params, start_round=ctx.start_round)


SPEC = ProtocolSpec(
    name="dpsgd",
    summary="D-PSGD: train, exchange with the graph's neighbours, combine with the rule (DFedSAM with sam_rho)",
    configure=_configure,
    build=_build,
    rule_inputs=lambda config, degree: degree,
    report="every-node",
    resumable=True,
)
