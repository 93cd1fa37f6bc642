"""Events that drive a protocol and actions it returns — the whole contract between a sans-I/O protocol
and the world that runs it (the simulator's virtual clock and network, or the node's trio runtime).

A protocol never reads a clock, sleeps, opens a socket or touches a global RNG: the runner passes the
current time into every call and carries out the actions it gets back. Time is in seconds, as a float,
on whatever clock the runner keeps (virtual in the simulator, ``trio.current_time()`` in the node).

Peers are named by strings: a libp2p peer id (base58) in the node, a stable name in the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from phalanx.gossip.messages import Message

PeerId = str


def _check_vector(name: str, vector: torch.Tensor) -> None:
    if not isinstance(vector, torch.Tensor) or vector.dtype != torch.float32 or vector.dim() != 1:
        raise TypeError(f"{name} must be a 1-D float32 tensor")


# ---------------------------------------------------------------- events (runner -> protocol)


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageReceived:
    """A peer's message, already decoded and validated by the wire layer."""

    peer: PeerId
    message: Message


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerFired:
    """A timer set by :class:`SetTimer` reached its deadline (and was not cancelled or replaced)."""

    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingDone:
    """Local training asked for by :class:`Train` finished."""

    round: int
    params: torch.Tensor
    loss: float = float("nan")

    def __post_init__(self) -> None:
        _check_vector("TrainingDone.params", self.params)


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerUp:
    """A connection to ``peer`` is open (or, in the simulator, the peer came back)."""

    peer: PeerId


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerDown:
    """The connection to ``peer`` closed, or the runner knows the peer is gone."""

    peer: PeerId


@dataclass(frozen=True, slots=True, kw_only=True)
class EvaluationDone:
    """The answer to :class:`Evaluate`: the model's accuracy on the node's own local samples.

    ``per_class[c]`` is the accuracy on the local samples of class ``c`` (NaN for a class the node holds
    no sample of); ``samples`` is how many samples were used.
    """

    tag: str
    round: int
    accuracy: float
    loss: float
    per_class: tuple[float, ...]
    samples: int


Event = MessageReceived | TimerFired | TrainingDone | PeerUp | PeerDown | EvaluationDone


# ---------------------------------------------------------------- actions (protocol -> runner)


@dataclass(frozen=True, slots=True, kw_only=True)
class Send:
    """Deliver ``message`` to ``peer``; delivery may fail or be late, and the protocol must cope."""

    peer: PeerId
    message: Message


@dataclass(frozen=True, slots=True, kw_only=True)
class Train:
    """Run ``steps`` local training steps starting from ``params``; answer with :class:`TrainingDone`.

    A runner may abandon training whose round the protocol no longer wants; a protocol ignores a
    ``TrainingDone`` for a round it has moved past.
    """

    round: int
    params: torch.Tensor
    steps: int

    def __post_init__(self) -> None:
        _check_vector("Train.params", self.params)
        if self.steps < 0:
            raise ValueError(f"Train.steps must be >= 0, got {self.steps}")


@dataclass(frozen=True, slots=True, kw_only=True)
class SetTimer:
    """Fire :class:`TimerFired` with ``name`` at absolute time ``deadline``; replaces a timer of that name."""

    name: str
    deadline: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelTimer:
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundCompleted:
    """The node holds the outcome of ``round``: ``params`` is the model every later round builds on.

    One meaning for every protocol: D-PSGD and Epidemic Learning report their combined model at the end of
    round ``round``; MoDeST reports round ``k``'s aggregate when a trainer of round ``k + 1`` receives it
    (or combines it, in the robust variant). The runner evaluates it, checkpoints it as "``round + 1``
    rounds done" and logs it. ``received``/``accepted`` count the models the round's rule combined.
    """

    round: int
    params: torch.Tensor
    received: int = 0
    accepted: int = 0

    def __post_init__(self) -> None:
        _check_vector("RoundCompleted.params", self.params)


@dataclass(frozen=True, slots=True, kw_only=True)
class PenalisePeer:
    """``peer`` sent something the protocol rejects (a remote error); the runner counts it and may ban."""

    peer: PeerId
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Evaluate:
    """Evaluate ``params`` on the node's own local samples; answer with :class:`EvaluationDone` (same ``tag``).

    For filters that judge a received model by how it does on local data (Bristle's per-class integrator).
    ``samples`` caps how many local samples are used (0: the runner's default).
    """

    tag: str
    round: int
    params: torch.Tensor
    samples: int = 0

    def __post_init__(self) -> None:
        _check_vector("Evaluate.params", self.params)
        if self.samples < 0:
            raise ValueError(f"Evaluate.samples must be >= 0, got {self.samples}")


Action = Send | Train | SetTimer | CancelTimer | RoundCompleted | PenalisePeer | Evaluate
