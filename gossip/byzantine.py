"""Byzantine behaviour as a sans-I/O wrapper around an honest protocol.

:class:`Byzantine` runs the honest protocol inside (so the attacker keeps pace with rounds and timers) and
rewrites the model messages it sends. Behaviours:

- ``attack``: every neighbour gets the vector of an attack of :mod:`phalanx.aggregation` (ALIE, IPM, ...),
  computed from the honest vectors the attacker knows;
- ``dissensus`` (He et al., 2022, "Byzantine-robust decentralized learning via ClippedGossip"): neighbour i gets
  ``x_i - eps * sum_k w_ik (x_k - x_i) / sum_b w_ib``, pushing i away from its honest neighbours' average;
- ``equivocation``: each neighbour gets a different vector (the honest one plus its own noise);
- ``silent``: sends nothing (crash-like, but keeps answering nothing forever);
- ``label-flip``: behaves honestly; the poison is in the data (the learner's ``flipped=True``).

Attack vectors need the honest vectors of the exchange, so the attacker is *rushing*: it holds its
messages for ``delay`` seconds (a timer) while honest messages arrive, then sends. What it knows:

- without help (the real node), the vectors its neighbours sent it and its own honest vector;
- in simulation, an ``omniscient(target, round, step)`` hook may return an :class:`HonestView` of the target:
  the target's own vector, its honest neighbours' vectors and their mixing weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from phalanx.gossip.events import (
    Action,
    EvaluationDone,
    MessageReceived,
    PeerId,
    Send,
    SetTimer,
    TrainingDone,
)
from phalanx.gossip.messages import AggregatedModel, Message, ModelUpdate, TrainedModel
from phalanx.gossip.protocol import Protocol

if TYPE_CHECKING:
    from phalanx.gossip.modest.node import Modest

BEHAVIOURS = ("attack", "dissensus", "equivocation", "silent", "label-flip")
_TIMER = "byzantine/"


@dataclass(frozen=True, slots=True, kw_only=True)
class HonestView:
    """What an omniscient attacker knows about ``target`` in one exchange."""

    own: torch.Tensor | None
    neighbours: torch.Tensor  # (k, d) honest neighbours' vectors
    weights: torch.Tensor  # (k,) the target's mixing weights for them
    byzantine_weight: float  # total weight the target gives to Byzantine neighbours
    byzantine: int = 1  # how many Byzantine neighbours the target has


Omniscient = Callable[[PeerId, int, int], HonestView | None]


def attack_names() -> tuple[str, ...]:
    try:
        from phalanx.aggregation import ATTACKS
    except ImportError:
        return ("dissensus", "equivocation", "silent", "label-flip")
    return tuple(sorted({*ATTACKS, "dissensus", "equivocation", "silent", "label-flip"}))


def run_attack(name: str, honest: torch.Tensor, params: Mapping[str, Any]) -> torch.Tensor:
    """One attack vector of :mod:`phalanx.aggregation` from the (n, d) honest vectors."""
    import phalanx.aggregation as agg

    attack = getattr(agg, "attack", None)
    if attack is not None:
        return attack(name, honest, **params)
    return agg.ATTACKS[name](honest, **params)


@dataclass(slots=True)
class _Held:
    messages: dict[PeerId, ModelUpdate] = field(default_factory=dict)


class Byzantine(Protocol):
    """Wrap ``inner`` and rewrite its outgoing model messages (see the module docstring)."""

    def __init__(
        self,
        inner: Protocol,
        *,
        behaviour: str,
        attack: str = "",
        attack_params: Mapping[str, Any] | None = None,
        delay: float = 0.0,
        omniscient: Omniscient | None = None,
        colluders: frozenset[PeerId] = frozenset(),
        rng: np.random.Generator,
    ) -> None:
        if behaviour not in BEHAVIOURS:
            raise ValueError(
                f"unknown Byzantine behaviour {behaviour!r}; choose one of: {', '.join(BEHAVIOURS)}"
            )
        if behaviour == "attack" and not attack:
            raise ValueError("behaviour 'attack' needs an attack name")
        self.inner = inner
        self.behaviour = behaviour
        self.attack = attack
        self.params = dict(attack_params or {})
        self.delay = delay
        self.omniscient = omniscient
        self.colluders = colluders
        self.rng = rng
        self.sent = 0
        self.failures = 0
        self._held: dict[tuple[int, int], _Held] = {}
        self._seen: dict[tuple[int, int], dict[PeerId, torch.Tensor]] = {}

    # ------------------------------------------------------------------ pass-through with interception

    def start(self, now: float) -> list[Action]:
        return self._rewrite(self.inner.start(now), now)

    def on_message(self, peer: PeerId, message: object, now: float) -> list[Action]:
        if isinstance(message, ModelUpdate) and peer not in self.colluders:
            key = (message.round, message.step)
            self._seen.setdefault(key, {})[peer] = message.params
        return self._rewrite(self.inner.handle(MessageReceived(peer=peer, message=message), now), now)  # type: ignore[arg-type]

    def on_timer(self, name: str, now: float) -> list[Action]:
        if name.startswith(_TIMER):
            _, r, s = name.split("/")
            return self._release((int(r), int(s)))
        return self._rewrite(self.inner.on_timer(name, now), now)

    def on_training_done(self, event: TrainingDone, now: float) -> list[Action]:
        return self._rewrite(self.inner.on_training_done(event, now), now)

    def on_peer_up(self, peer: PeerId, now: float) -> list[Action]:
        return self._rewrite(self.inner.on_peer_up(peer, now), now)

    def on_peer_down(self, peer: PeerId, now: float) -> list[Action]:
        return self._rewrite(self.inner.on_peer_down(peer, now), now)

    def on_evaluation_done(self, event: EvaluationDone, now: float) -> list[Action]:
        return self._rewrite(self.inner.on_evaluation_done(event, now), now)

    def leave(self, now: float) -> list[Action]:
        return self._rewrite(self.inner.leave(now), now)

    def join(self, now: float) -> list[Action]:
        return self._rewrite(self.inner.join(now), now)

    def resume(self, now: float) -> list[Action]:
        return self._rewrite(self.inner.resume(now), now)

    @property
    def finished(self) -> bool:
        return self.inner.finished

    def stats(self) -> dict[str, float]:
        return {**self.inner.stats(), "attack_messages": self.sent, "attack_failures": self.failures}

    def _rewrite(self, actions: list[Action], now: float) -> list[Action]:
        if self.behaviour == "label-flip":
            return actions
        out: list[Action] = []
        for action in actions:
            if not (isinstance(action, Send) and isinstance(action.message, ModelUpdate)):
                out.append(action)
                continue
            if self.behaviour == "silent":
                continue
            msg = action.message
            key = (msg.round, msg.step)
            held = self._held.get(key)
            if held is None:
                held = self._held[key] = _Held()
                out.append(SetTimer(name=f"{_TIMER}{msg.round}/{msg.step}", deadline=now + self.delay))
            held.messages[action.peer] = msg
        return out

    # ------------------------------------------------------------------ attack vectors

    def _release(self, key: tuple[int, int]) -> list[Action]:
        held = self._held.pop(key, None)
        seen = self._seen.pop(key, {})
        for old in [k for k in self._seen if k < key]:
            del self._seen[old]
        if held is None:
            return []
        actions: list[Action] = []
        for peer, msg in held.messages.items():
            if peer in self.colluders:
                continue
            vector = self._vector(peer, msg, seen)
            actions.append(
                Send(peer=peer, message=ModelUpdate(round=msg.round, step=msg.step, params=vector))
            )
        self.sent += len(actions)
        return actions

    def _view(self, peer: PeerId, msg: ModelUpdate, seen: dict[PeerId, torch.Tensor]) -> HonestView:
        if self.omniscient is not None:
            view = self.omniscient(peer, msg.round, msg.step)
            if view is not None and (view.own is not None or len(view.neighbours)):
                return view
        others = [v for p, v in sorted(seen.items()) if p != peer]
        stack = torch.stack(others) if others else msg.params.new_zeros((0, msg.params.numel()))
        k = len(others)
        return HonestView(
            own=seen.get(peer, msg.params),
            neighbours=stack,
            weights=torch.full((k,), 1.0 / (k + 2), device=msg.params.device),
            byzantine_weight=1.0 / (k + 2),
        )

    def _vector(self, peer: PeerId, msg: ModelUpdate, seen: dict[PeerId, torch.Tensor]) -> torch.Tensor:
        honest = msg.params
        if self.behaviour == "equivocation":
            scale = float(self.params.get("scale", 1.0))
            noise = torch.from_numpy(self.rng.standard_normal(honest.numel()).astype(np.float32))
            return honest + scale * noise
        view = self._view(peer, msg, seen)
        if self.behaviour == "dissensus":
            if view.own is None or not len(view.neighbours) or view.byzantine_weight <= 0:
                return honest
            params = {"epsilon": 1.0, **self.params}
            extra = {"own": view.own, "weights": view.weights, "byzantine_weight": view.byzantine_weight}
            try:
                return run_attack("dissensus", view.neighbours, {**params, **extra})
            except ValueError:  # e.g. the target's own model diverged: nothing sensible to push against
                self.failures += 1
                return honest
        rows = [view.neighbours] if len(view.neighbours) else []
        if view.own is not None:
            rows.insert(0, view.own.unsqueeze(0))
        if not rows:
            return honest
        stack = torch.cat(rows)
        if stack.shape[0] < 2:
            stack = torch.cat([stack, honest.unsqueeze(0)])
        params = dict(self.params)
        if self.attack == "alie" and "z" not in params and "f" not in params:
            # The paper's z for the Byzantine share the target sees (capped where its formula stops: f <= n/2).
            f, h = max(1, view.byzantine), stack.shape[0]
            while f > 1 and (h + f) // 2 + 1 - f <= 0:
                f -= 1
            params["f"] = f
        try:
            return run_attack(self.attack, stack, params)
        except ValueError:
            self.failures += 1
            return honest


class ByzantineModest(Protocol):
    """A Byzantine MoDeST node: an honest :class:`~phalanx.gossip.modest.node.Modest` inside, whose outgoing
    models are replaced.

    ``roles`` says when it attacks: as a ``"trainer"`` (the :class:`TrainedModel` it sends) and/or as an
    ``"aggregator"`` (the :class:`AggregatedModel` it sends). The attack vector comes from an attack of
    :mod:`phalanx.aggregation` applied to the honest vectors the node holds: as an aggregator, the trainers'
    models it just aggregated; as a trainer, its own trained model and the round's model. ``"silent"``
    sends no models at all (it still answers pings, so it is drawn and wastes the slot).

    A Byzantine aggregator should be *rushing* (built with ``ModestConfig(rushing=True)``): it aggregates
    and sends as soon as the first trained model arrives, so its aggregate reaches the trainers first.
    The wrapper never edits the inner node's config.
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
        self.inner = inner
        self.attack = attack
        self.params = dict(attack_params or {})
        self.roles = frozenset(roles)
        self._cache: tuple[object, Message | None] | None = None
        self.sent = 0
        self.failures = 0

    def start(self, now: float) -> list[Action]:
        return self._rewrite(self.inner.start(now))

    def on_message(self, peer: PeerId, message: object, now: float) -> list[Action]:
        return self._rewrite(self.inner.on_message(peer, message, now))

    def on_timer(self, name: str, now: float) -> list[Action]:
        return self._rewrite(self.inner.on_timer(name, now))

    def on_training_done(self, event: TrainingDone, now: float) -> list[Action]:
        return self._rewrite(self.inner.on_training_done(event, now))

    def on_peer_up(self, peer: PeerId, now: float) -> list[Action]:
        return self._rewrite(self.inner.on_peer_up(peer, now))

    def on_peer_down(self, peer: PeerId, now: float) -> list[Action]:
        return self._rewrite(self.inner.on_peer_down(peer, now))

    def on_evaluation_done(self, event: EvaluationDone, now: float) -> list[Action]:
        return self._rewrite(self.inner.on_evaluation_done(event, now))

    def resume(self, now: float) -> list[Action]:
        return self._rewrite(self.inner.resume(now))

    def leave(self, now: float) -> list[Action]:
        return self._rewrite(self.inner.leave(now))

    def join(self, now: float) -> list[Action]:
        return self._rewrite(self.inner.join(now))

    @property
    def finished(self) -> bool:
        return self.inner.finished

    def stats(self) -> dict[str, float]:
        return {**self.inner.stats(), "attack_messages": self.sent, "attack_failures": self.failures}

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
            if role == "aggregator" and self.inner.aggregator.last_inputs is not None:
                honest = self.inner.aggregator.last_inputs
            else:
                honest = torch.stack([message.params, self.inner.model])
            try:
                vector = run_attack(self.attack, honest, self.params)
            except (KeyError, TypeError, ValueError):  # an attack that needs what this node cannot know
                self.failures += 1
                vector = message.params
            result = replace(message, params=vector.to(torch.float32).contiguous())
        self._cache = (message, result)
        return result
