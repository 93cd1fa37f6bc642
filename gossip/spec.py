"""What a protocol declares once so the simulator, the node and the CLI can run it: :class:`ProtocolSpec`.

A protocol module defines its parameters (a frozen dataclass whose field names are the ``protocol_params``
keys, with defaults and help in the fields), a ``configure`` step (run settings + parameters + the world's
defaults -> the protocol's own config object), how many inputs its rule sees, and ``build`` (one node from
a :class:`NodeContext`). The registry (:mod:`phalanx.gossip.registry`) lists the specs; runners read only
the spec, never a protocol's name::

    spec = registry.get(settings.protocol)
    config = spec.config(settings, world)          # SettingsError (one line) on a bad setting
    protocol = spec.build_node(ctx, config, attack)  # attack=None for an honest node

The Byzantine form of a node is the spec's business too (``byzantine``): the default wraps the honest node
in :class:`~phalanx.gossip.byzantine.Byzantine` (which rewrites ``ModelUpdate`` messages); MoDeST builds its
own attacker. Label flipping is data poisoning: the node stays honest and the runner flips its labels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch

from phalanx.gossip.events import PeerId
from phalanx.gossip.fields import coerce
from phalanx.gossip.identity import Signer, Verifier
from phalanx.gossip.protocol import Protocol as GossipProtocol


class SettingsError(ValueError):
    """A protocol setting that cannot be used; the message names the protocol and the key."""


class RunSettings(Protocol):
    """The settings every protocol reads (fields of both ``SimConfig`` and ``NodeConfig``)."""

    @property
    def protocol(self) -> str: ...
    @property
    def protocol_params(self) -> Mapping[str, Any]: ...
    @property
    def rule(self) -> str: ...
    @property
    def rule_params(self) -> Mapping[str, Any]: ...
    @property
    def local_steps(self) -> int: ...
    @property
    def gossip_steps(self) -> int: ...
    @property
    def round_timeout(self) -> float: ...
    @property
    def rounds(self) -> int: ...
    @property
    def seed(self) -> int: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class WorldDefaults:
    """Defaults that differ between the worlds, given by the runner (None: the protocol's own default).

    The simulator derives timeouts from its virtual network and step time; the node has real ones.
    """

    ping_timeout: float | None = None
    progress_timeout: float | None = None
    max_sample: int | None = None  # the most peers a sampling protocol can draw from (the node's neighbours)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeContext:
    """Everything either runner can tell a protocol when it builds one node."""

    node: PeerId
    params: torch.Tensor  # the initial model; a protocol clones it before writing into it
    neighbours: tuple[PeerId, ...] = ()
    weights: Mapping[PeerId, float] | None = None  # static mixing weights; None: uniform 1 / (deg + 1)
    peers: tuple[PeerId, ...] = ()  # the initial membership a sampling protocol draws from (node included)
    rng: np.random.Generator
    schedule: Callable[[int], Mapping[PeerId, float]] | None = None  # time-varying neighbour weights
    start_round: int = 0
    include_own: bool = True
    late: bool = False  # starts outside the network; joins when the runner resumes it
    signer: Signer | None = None  # this node's key, for records only it may sign (membership)
    verifier: Verifier | None = None  # checks other peers' signed records

    def members(self) -> tuple[PeerId, ...]:
        """The initial membership of a sampling protocol: the node, its peers and its neighbours, sorted."""
        return tuple(sorted({self.node, *self.peers, *self.neighbours}))


@dataclass(frozen=True, slots=True, kw_only=True)
class AttackSpec:
    """How a Byzantine node misbehaves: a behaviour of :mod:`phalanx.gossip.byzantine` and its attack."""

    behaviour: str  # attack | dissensus | equivocation | silent | label-flip
    attack: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    delay: float = 0.0  # how long a rushing attacker holds its messages
    omniscient: Callable[[PeerId, int, int], Any] | None = None  # the simulator's oracle (see byzantine.py)
    colluders: frozenset[PeerId] = frozenset()
    rng: np.random.Generator


@dataclass(frozen=True, slots=True, kw_only=True)
class NoParams:
    """A protocol that takes no ``protocol_params``."""


Report = Literal["every-node", "sampled"]


@dataclass(frozen=True, kw_only=True)
class ProtocolSpec:
    """One protocol as the runners see it (see the module docstring).

    Attributes:
        name: the ``--protocol`` value.
        summary: one line for help texts and ``list``.
        params: the frozen dataclass of its ``protocol_params`` (field names are the keys).
        configure: ``(settings, params, world) -> config``: the protocol's own config object.
        build: ``(ctx, config) -> Protocol``: one honest node.
        rule_inputs: ``(config, degree) -> n``: how many received models its rule combines at the fewest at a
            node of this degree (``None``: the protocol applies no rule; any rule but ``mean`` is refused).
        own_row: whether the rule also sees the node's own model (D-PSGD, EL) or only received ones (MoDeST).
        report: ``every-node`` (every live node reports every round) or ``sampled`` (a sample does).
        resumable: a restarted real node may resume at its checkpoint's round.
        carries_views: its messages carry membership views (MoDeST); otherwise a real node decodes under
            ``Limits.model_only`` (a model and a few integers per frame: no room for a decode bomb).
        byzantine: ``(ctx, config, attack) -> Protocol``; ``None``: the honest node in ``Byzantine``.
    """

    name: str
    summary: str
    params: type = NoParams
    configure: Callable[[RunSettings, Any, WorldDefaults], Any]
    build: Callable[[NodeContext, Any], GossipProtocol]
    rule_inputs: Callable[[Any, int], int | None]
    own_row: bool = True
    report: Report = "every-node"
    resumable: bool = False
    carries_views: bool = False
    byzantine: Callable[[NodeContext, Any, AttackSpec], GossipProtocol] | None = None

    def parse_params(self, raw: Mapping[str, Any]) -> Any:
        """The parameters dataclass from plain ``protocol_params``; :class:`SettingsError` naming the key."""
        known = sorted(f.name for f in dataclasses.fields(self.params))
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise SettingsError(
                f"unknown protocol_params {', '.join(unknown)} for {self.name}; "
                + (f"known: {', '.join(known)}" if known else "it takes none")
            )
        try:
            return self.params(**coerce(self.params, raw, error=SettingsError, where=f"{self.name}: "))
        except SettingsError:
            raise
        except (TypeError, ValueError) as exc:
            raise SettingsError(f"{self.name}: {exc}") from None

    def config(self, settings: RunSettings, world: WorldDefaults | None = None) -> Any:
        """The protocol's config for a run; every problem is one :class:`SettingsError` line."""
        params = self.parse_params(settings.protocol_params)
        try:
            return self.configure(settings, params, world or WorldDefaults())
        except SettingsError:
            raise
        except (TypeError, ValueError) as exc:
            raise SettingsError(f"{self.name}: {exc}") from None

    def build_node(self, ctx: NodeContext, config: Any, attack: AttackSpec | None = None) -> GossipProtocol:
        """One node: honest, or Byzantine when ``attack`` is given (label flipping stays honest here)."""
        try:
            if attack is None or attack.behaviour == "label-flip":
                return self.build(ctx, config)
            if self.byzantine is not None:
                return self.byzantine(ctx, config, attack)
            return wrap_byzantine(self.build(ctx, config), attack)
        except (TypeError, ValueError) as exc:
            raise SettingsError(f"{self.name}: {exc}") from None


def wrap_byzantine(honest: GossipProtocol, attack: AttackSpec) -> GossipProtocol:
    """The default Byzantine form: ``honest`` inside :class:`~phalanx.gossip.byzantine.Byzantine`."""
    from phalanx.gossip.byzantine import Byzantine

    return Byzantine(
        honest,
        behaviour=attack.behaviour,
        attack=attack.attack,
        attack_params=attack.params,
        delay=attack.delay,
        omniscient=attack.omniscient,
        colluders=attack.colluders,
        rng=attack.rng,
    )
