"""Epidemic Learning (de Vos et al., NeurIPS 2023): every round, train, send to s peers, average.

- **EL-Local**: each node sends its freshly trained model to ``s`` peers it draws uniformly at random (from
  its own seeded generator) and, when ``round_timeout`` seconds have passed since it sent, averages its
  own model with every model of that round it received (however many: a node receives s on average).
- **EL-Oracle**: every round the nodes follow a fresh random s-regular directed graph, so each node sends
  to ``s`` and receives from exactly ``s``; a node averages as soon as it has its ``s`` models (or at the
  timeout, when some are lost).

**Where EL-Oracle's graph comes from.** gossip/ cannot import networkx, and the oracle must be the same
for every node without anyone coordinating, so it is generated here by a pure seeded algorithm:
:func:`oracle_out_neighbours` shuffles the sorted peer list with a generator seeded by SHA-256 of
(seed, round) and lets the node at position ``i`` send to positions ``i+1 .. i+s`` (mod n). Every node
then has out-degree and in-degree exactly ``s``, every node computes the same graph from the same peer
list, and the graph changes every round. (It is a random relabelling of a circulant graph, not a uniform
draw among all s-regular graphs; what EL-Oracle needs — fresh, regular, independent of the data — holds.)

Models travel as :class:`~phalanx.gossip.messages.ModelUpdate`. A model of a round the node has finished
is dropped; one of a later round waits in the inbox (up to ``max_ahead`` rounds ahead; further ones are
dropped and counted), and a second model from the same peer for the same round is dropped.

**A changing membership.** On a network the node joined through a bootstrap peer, the runner hands it the
members it knows between rounds (:meth:`Epidemic.set_peers`); EL-Local then draws its ``s`` peers from those
(all of them while it knows ``s`` or fewer). EL-Oracle needs every node to agree on the peer list, so it keeps
a fixed one.

**The rule.** The paper averages the node's own model with the ones it received. ``rule`` (any rule of
:mod:`phalanx.aggregation`, through :class:`~phalanx.gossip.aggregator.Combiner`, with uniform weights)
replaces that average: ``mean`` is the paper's EL, a robust rule filters what Byzantine senders push.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from phalanx.gossip.aggregator import Combiner
from phalanx.gossip.events import (
    Action,
    PeerId,
    PenalisePeer,
    RoundCompleted,
    Send,
    SetTimer,
    Train,
    TrainingDone,
)
from phalanx.gossip.messages import ModelUpdate
from phalanx.gossip.protocol import LocalProtocolError as ProtocolError
from phalanx.gossip.protocol import Protocol
from phalanx.gossip.spec import NodeContext, ProtocolSpec, RunSettings, WorldDefaults

VARIANTS = ("local", "oracle")


@dataclass(frozen=True, slots=True, kw_only=True)
class EpidemicConfig:
    s: int = 7
    variant: str = "local"
    local_steps: int = 1
    round_timeout: float = 1.0
    rounds: int = 0
    seed: int = 0  # the oracle graph's seed, the same on every node
    rule: str = "mean"
    rule_params: Mapping[str, Any] = field(default_factory=dict)
    max_ahead: int = 2

    def __post_init__(self) -> None:
        if self.s < 1:
            raise ValueError(f"s must be >= 1, got {self.s}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.local_steps < 0 or self.rounds < 0 or not self.round_timeout > 0:
            raise ValueError("local_steps and rounds must be >= 0, round_timeout > 0")


@lru_cache(maxsize=64)
def oracle_out_neighbours(
    peers: tuple[PeerId, ...], k: int, s: int, seed: int
) -> dict[PeerId, tuple[PeerId, ...]]:
    """Round ``k``'s s-regular directed graph over ``peers``: node -> the ``s`` peers it sends to."""
    n = len(peers)
    if not 1 <= s < n:
        raise ValueError(f"an s-regular graph on {n} nodes needs 1 <= s < n, got s={s}")
    digest = hashlib.sha256(f"el-oracle:{seed}:{k}".encode()).digest()
    order = sorted(peers)
    perm = np.random.default_rng(int.from_bytes(digest[:8], "little")).permutation(n)
    ring = [order[int(i)] for i in perm]
    return {ring[i]: tuple(ring[(i + j) % n] for j in range(1, s + 1)) for i in range(n)}


class Epidemic(Protocol):
    """One node running EL-Local or EL-Oracle over ``peers`` (every node's id, this one included)."""

    def __init__(
        self,
        *,
        node: PeerId,
        params: torch.Tensor,
        peers: Sequence[PeerId],
        config: EpidemicConfig,
        rng: np.random.Generator,
    ) -> None:
        self.node = node
        self.config = config
        self.rng = rng
        self.peers = tuple(sorted(peers))
        self.others = tuple(p for p in self.peers if p != node)
        # EL-Local with s above the peers known now sends to all of them (a membership that grows through
        # set_peers); the registry entry still refuses such an s on a fixed membership
        if config.variant == "oracle" and config.s > len(self.others):
            raise ValueError(f"s = {config.s} exceeds the {len(self.others)} other peers")
        self.model = params.clone()
        self.round = 0
        self.trained: torch.Tensor | None = None  # this round's own trained model, once done
        self.inbox: dict[int, dict[PeerId, torch.Tensor]] = {}
        self.combiner = Combiner(config.rule, config.rule_params, include_own=True)
        self.counters = {"received": 0, "rejected_late": 0, "rejected_too_early": 0, "rejected_duplicate": 0}

    def targets(self, k: int) -> tuple[PeerId, ...]:
        """The peers this node sends its round-``k`` model to."""
        if self.config.variant == "oracle":
            return oracle_out_neighbours(self.peers, k, self.config.s, self.config.seed)[self.node]
        size = min(self.config.s, len(self.others))
        picks = self.rng.choice(len(self.others), size=size, replace=False)
        return tuple(self.others[int(i)] for i in sorted(picks))

    def set_peers(self, peers: Sequence[PeerId], now: float) -> list[Action]:
        """Draw from ``peers`` (this node's known members) from the next send on (EL-Local only)."""
        if self.config.variant == "oracle":
            raise ProtocolError("EL-Oracle keeps a fixed peer list: every node must draw the same graph")
        self.peers = tuple(sorted({self.node, *peers}))
        self.others = tuple(p for p in self.peers if p != self.node)
        return []

    def start(self, now: float) -> list[Action]:
        return [Train(round=0, params=self.model, steps=self.config.local_steps)]

    def on_training_done(self, event: TrainingDone, now: float) -> list[Action]:
        if event.round != self.round or self.trained is not None:
            return []
        self.trained = event.params
        message = ModelUpdate(round=self.round, params=event.params)
        actions: list[Action] = [Send(peer=p, message=message) for p in self.targets(self.round)]
        if self._complete():
            return actions + self._finish()
        actions.append(SetTimer(name="round", deadline=now + self.config.round_timeout))
        return actions

    def _complete(self) -> bool:
        return self.config.variant == "oracle" and len(self.inbox.get(self.round, ())) >= self.config.s

    def on_message(self, peer: PeerId, message: object, now: float) -> list[Action]:
        if not isinstance(message, ModelUpdate):
            return [PenalisePeer(peer=peer, reason=f"unexpected message {type(message).__name__}")]
        if message.round < self.round:
            self.counters["rejected_late"] += 1
            return []
        if message.round > self.round + self.config.max_ahead:
            self.counters["rejected_too_early"] += 1
            return []
        box = self.inbox.setdefault(message.round, {})
        if peer in box:
            self.counters["rejected_duplicate"] += 1
            return []
        box[peer] = message.params
        self.counters["received"] += 1
        if message.round == self.round and self.trained is not None and self._complete():
            return self._finish()
        return []

    def on_timer(self, name: str, now: float) -> list[Action]:
        if name == "round" and self.trained is not None:
            return self._finish()
        return []

    def _finish(self) -> list[Action]:
        assert self.trained is not None
        k = self.round
        received = self.inbox.pop(k, {})
        weight = 1.0 / (len(received) + 1)
        self.model = self.combiner(self.trained, received, {p: weight for p in received})
        self.trained = None
        self.round = k + 1
        actions: list[Action] = [
            RoundCompleted(round=k, params=self.model, received=len(received), accepted=len(received))
        ]
        if self.config.rounds and self.round >= self.config.rounds:
            return actions
        return [*actions, Train(round=self.round, params=self.model, steps=self.config.local_steps)]

    @property
    def finished(self) -> bool:
        """All ``rounds`` rounds combined (never, with ``rounds = 0``)."""
        return bool(self.config.rounds) and self.round >= self.config.rounds

    def stats(self) -> dict[str, float]:
        return {
            **self.counters,
            "rule_failures": self.combiner.failures,
            "dropped_nonfinite": self.combiner.dropped_nonfinite,
        }


# ---------------------------------------------------------------- registry entries

EL_S = 7  # the paper's default sample size


@dataclass(frozen=True, slots=True, kw_only=True)
class EpidemicParams:
    s: int | None = field(
        default=None,
        metadata={"help": f"peers each node sends to per round (default {EL_S}, at most the peers it knows)"},
    )


def _configurer(variant: str):  # type: ignore[no-untyped-def]
    def configure(settings: RunSettings, params: EpidemicParams, world: WorldDefaults) -> EpidemicConfig:
        s = params.s
        if s is None:
            s = EL_S if world.max_sample is None else min(EL_S, max(1, world.max_sample))
        elif world.max_sample is not None and s > world.max_sample:
            raise ValueError(f"s = {s} exceeds the {world.max_sample} other peers")
        return EpidemicConfig(
            s=s,
            variant=variant,
            local_steps=settings.local_steps,
            round_timeout=settings.round_timeout,
            rounds=settings.rounds,
            seed=settings.seed,
            rule=settings.rule,
            rule_params=settings.rule_params,
        )

    return configure


def _build(ctx: NodeContext, config: EpidemicConfig) -> Epidemic:
    return Epidemic(node=ctx.node, params=ctx.params, peers=ctx.members(), config=config, rng=ctx.rng)


def _spec(variant: str, summary: str) -> ProtocolSpec:
    return ProtocolSpec(
        name=f"el-{variant}",
        summary=summary,
        params=EpidemicParams,
        configure=_configurer(variant),
        build=_build,
        rule_inputs=lambda config, degree: config.s,
    )


SPEC_LOCAL = _spec(
    "local", "Epidemic Learning, EL-Local: send to s random peers each round, combine what arrived"
)
SPEC_ORACLE = _spec("oracle", "Epidemic Learning, EL-Oracle: a fresh random s-regular graph each round")
