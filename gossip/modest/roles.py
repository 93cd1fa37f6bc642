"""The books of MoDeST's two roles, apart from the node that sends and times things.

:class:`Aggregator` keeps the trained models of each round until the round is aggregated;
:class:`RobustTrainer` (the Byzantine-robust variant) keeps the aggregates of the round a trainer collects
until it combines them. Both apply their rule through :class:`~phalanx.gossip.aggregator.Combiner` (one
failure policy: non-finite rows dropped and counted, a rule that cannot run falls back to the median).
They decide; :class:`~phalanx.gossip.modest.node.Modest` turns the decisions into actions.
"""

from __future__ import annotations

import enum

import torch

from phalanx.gossip.aggregator import Combiner
from phalanx.gossip.events import PeerId
from phalanx.gossip.modest.config import ModestConfig


class Added(enum.Enum):
    STALE = "stale"  # for a round already aggregated (or combined), or one the network is past
    FIRST = "first"  # the first of its round: start the round's timer
    MORE = "more"  # one more, still short of what is needed
    ENOUGH = "enough"  # what is needed is in: aggregate (combine) now


class Aggregator:
    """An aggregator's trained models by round ``k`` (they make round ``k + 1``'s model)."""

    def __init__(self, config: ModestConfig) -> None:
        self.needed = config.needed_models
        self.combiner = Combiner(config.aggregator_rule, config.aggregator_params, include_own=False)
        self.inbox: dict[int, dict[PeerId, torch.Tensor]] = {}
        self.aggregated = -1  # the newest round k + 1 aggregated
        self._last: dict[PeerId, torch.Tensor] = {}  # the trained models of the latest aggregation

    def holds(self, peer: PeerId, k: int) -> bool:
        return peer in self.inbox.get(k, {})

    def add(self, peer: PeerId, k: int, params: torch.Tensor, *, network_round: int) -> Added:
        if k + 1 <= self.aggregated or k + 1 < network_round:
            return Added.STALE  # already aggregated, or the network is past it (a late trainer)
        box = self.inbox.setdefault(k, {})
        first = not box
        box[peer] = params
        if len(box) >= self.needed:
            return Added.ENOUGH
        return Added.FIRST if first else Added.MORE

    def aggregate(self, k: int) -> torch.Tensor | None:
        """Round ``k + 1``'s model from the round-``k`` models in; None when there is nothing to hand on."""
        box = self.inbox.pop(k, None)
        if not box or k + 1 <= self.aggregated:
            return None
        for old in [r for r in self.inbox if r < k]:
            del self.inbox[old]
        model = self.combiner.of_rows(box)
        if model is None:  # every trained model was non-finite (counted)
            return None
        self.aggregated = k + 1
        self._last = box
        return model

    @property
    def last_inputs(self) -> torch.Tensor | None:
        """The trained models of the latest aggregation, stacked (what a Byzantine aggregator attacks from);
        stacked only when asked for, since an honest aggregator never needs them again."""
        if not self._last:
            return None
        return torch.stack([self._last[p] for p in sorted(self._last)])


class RobustTrainer:
    """A trainer of the robust variant: the aggregates of the round it collects, combined by a rule."""

    def __init__(self, config: ModestConfig, rule: str) -> None:
        self.quorum = config.quorum
        self.combiner = Combiner(rule, config.trainer_combine_params, include_own=False)
        self.collecting = -1
        self.aggregates: dict[PeerId, torch.Tensor] = {}

    def add(self, peer: PeerId, k: int, params: torch.Tensor) -> Added:
        if k < self.collecting:
            return Added.STALE
        first = k > self.collecting
        if first:
            self.collecting = k
            self.aggregates = {}
        self.aggregates[peer] = params
        if len(self.aggregates) >= self.quorum:
            return Added.ENOUGH
        return Added.FIRST if first else Added.MORE

    def pending(self, k: int) -> bool:
        return k == self.collecting and bool(self.aggregates)

    def combine(self) -> tuple[int, torch.Tensor | None]:
        received, self.aggregates = self.aggregates, {}
        return self.collecting, self.combiner.of_rows(received)
