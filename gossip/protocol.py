"""The protocol interface every gossip protocol implements, and the protocol error family.

A protocol is a plain state machine (the h11 style): ``start(now)`` and ``handle(event, now)`` return the
actions to carry out. The runner (simulator or node runtime) owns the clock, the network, the timers and
the training worker; the protocol owns the rules, including admission (which sender may send what for
which round) and the failure policy of its aggregation rule.

Lifecycle beyond ``start``: ``leave(now)`` (the node is about to go away and may announce it),
``resume(now)`` (the runner brings it back after an absence in which events meant for it were lost) and
``join(now)`` (come back after ``leave``). They are part of the interface with defaults that do nothing,
so every wrapper forwards them by construction. ``finished`` says the run is over for this node (the network
reached its last round, as far as this node knows); runners stop it then, after a linger in which it keeps
answering. ``stats()`` returns the protocol's counters (rule failures,
dropped rows, rejected messages by reason); both runners export them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from phalanx.gossip.events import (
    Action,
    EvaluationDone,
    Event,
    MessageReceived,
    PeerDown,
    PeerId,
    PeerUp,
    TimerFired,
    TrainingDone,
)


class ProtocolError(Exception):
    """Something broke a protocol rule. ``remote`` errors are a peer's fault: drop or penalise that peer."""

    def __init__(self, message: str, *, remote: bool, peer: PeerId | None = None) -> None:
        super().__init__(message)
        self.remote = remote
        self.peer = peer


class LocalProtocolError(ProtocolError):
    """The runner misused the protocol (a bug on our side)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, remote=False)


class RemoteProtocolError(ProtocolError):
    """A peer sent something that breaks the protocol."""

    def __init__(self, message: str, *, peer: PeerId) -> None:
        super().__init__(message, remote=True, peer=peer)


class Protocol(ABC):
    """Base of all protocols. Subclasses implement ``start`` and the ``on_*`` handlers they need."""

    @abstractmethod
    def start(self, now: float) -> list[Action]:
        """Begin: typically ask for the first round's training."""

    def handle(self, event: Event, now: float) -> list[Action]:
        """Dispatch one event to its handler."""
        if isinstance(event, MessageReceived):
            return self.on_message(event.peer, event.message, now)
        if isinstance(event, TimerFired):
            return self.on_timer(event.name, now)
        if isinstance(event, TrainingDone):
            return self.on_training_done(event, now)
        if isinstance(event, PeerUp):
            return self.on_peer_up(event.peer, now)
        if isinstance(event, PeerDown):
            return self.on_peer_down(event.peer, now)
        if isinstance(event, EvaluationDone):
            return self.on_evaluation_done(event, now)
        raise LocalProtocolError(f"unknown event {event!r}")

    @abstractmethod
    def on_message(self, peer: PeerId, message: object, now: float) -> list[Action]: ...

    @abstractmethod
    def on_timer(self, name: str, now: float) -> list[Action]: ...

    @abstractmethod
    def on_training_done(self, event: TrainingDone, now: float) -> list[Action]: ...

    def on_peer_up(self, peer: PeerId, now: float) -> list[Action]:
        return []

    def on_peer_down(self, peer: PeerId, now: float) -> list[Action]:
        return []

    def on_evaluation_done(self, event: EvaluationDone, now: float) -> list[Action]:
        """The answer to an :class:`~phalanx.gossip.events.Evaluate` this protocol asked for."""
        return []

    # ------------------------------------------------------------------ lifecycle (defaults: nothing to do)

    def leave(self, now: float) -> list[Action]:
        """The node is about to leave the network: announce it if the protocol does."""
        return []

    def join(self, now: float) -> list[Action]:
        """Come back after :meth:`leave`."""
        return []

    def resume(self, now: float) -> list[Action]:
        """The runner brings the node back after an absence (a crash, churn): resynchronise."""
        return []

    @property
    def finished(self) -> bool:
        """The run is over as far as this node knows (a run of ``rounds`` rounds reached its last round).
        Default: never (a protocol without a round budget runs until its runner stops it)."""
        return False

    def stats(self) -> dict[str, float]:
        """Counters for operators (exported by the simulator's metrics and the node's ``/metrics``)."""
        return {}
