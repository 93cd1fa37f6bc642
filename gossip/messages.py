"""Every message type phalanx sends, with its wire encoding and its checked decoding.

Each message is a frozen dataclass with a ``TYPE`` name, ``to_fields()`` and ``from_fields(fields, limits)``;
:data:`MESSAGE_TYPES` is the explicit registry the decoder dispatches on. Add new message types here and
register them at the bottom.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from phalanx.gossip.compression.base import CodecError, Encoded
from phalanx.gossip.identity import SIGNATURE_BYTES
from phalanx.gossip.membership import EMPTY_VIEW, MAX_COUNTER, ViewDelta
from phalanx.gossip.wire import Limits, WireError, pack, read_int, read_vector, unpack, vector_bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelUpdate:
    """A node's model at ``round`` (and gossip ``step`` within the round, for multi-step gossip)."""

    TYPE: ClassVar[str] = "model"
    round: int
    params: torch.Tensor
    step: int = 0

    def __post_init__(self) -> None:
        if self.round < 0 or self.step < 0:
            raise ValueError("ModelUpdate round and step must be >= 0")
        if self.params.dtype != torch.float32 or self.params.dim() != 1:
            raise TypeError("ModelUpdate.params must be a 1-D float32 tensor")

    def to_fields(self) -> dict[str, Any]:
        return {"r": self.round, "s": self.step, "p": vector_bytes(self.params)}

    @classmethod
    def from_fields(cls, fields: dict[str, Any], limits: Limits) -> ModelUpdate:
        return cls(
            round=read_int(fields, "r", hi=limits.max_round),
            step=read_int(fields, "s", hi=1 << 16),
            params=read_vector(fields, "p", dim=limits.dim),
        )


# ---------------------------------------------------------------- MoDeST (gossip/modest.py) and membership


def _check_params(name: str, params: torch.Tensor) -> None:
    if params.dtype != torch.float32 or params.dim() != 1:
        raise TypeError(f"{name}.params must be a 1-D float32 tensor")


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    """Are you available as a ``role`` (0 trainer, 1 aggregator) of round ``round``?

    ``nonce`` names the pinger's sampling search the answer belongs to.
    """

    TYPE: ClassVar[str] = "ping"
    round: int
    nonce: int = 0
    role: int = 0

    def to_fields(self) -> dict[str, Any]:
        return {"r": self.round, "n": self.nonce, "o": self.role}

    @classmethod
    def from_fields(cls, fields: dict[str, Any], limits: Limits) -> Ping:
        return cls(
            round=read_int(fields, "r", hi=limits.max_round),
            nonce=read_int(fields, "n", hi=2**63),
            role=read_int(fields, "o", hi=1),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong:
    """The answer to a :class:`Ping`, echoing its round and nonce.

    ``has``: the answering node already holds what the pinger would send it for that round; ``done``: it
    has also finished its part of the round (trained it, or aggregated it); ``latest``: the newest round
    the answering node knows of.
    """

    TYPE: ClassVar[str] = "pong"
    round: int
    nonce: int = 0
    has: bool = False
    done: bool = False
    latest: int = 0

    def to_fields(self) -> dict[str, Any]:
        flags = int(self.has) | (int(self.done) << 1)
        return {"r": self.round, "n": self.nonce, "f": flags, "l": self.latest}

    @classmethod
    def from_fields(cls, fields: dict[str, Any], limits: Limits) -> Pong:
        flags = read_int(fields, "f", hi=3)
        return cls(
            round=read_int(fields, "r", hi=limits.max_round),
            nonce=read_int(fields, "n", hi=2**63),
            has=bool(flags & 1),
            done=bool(flags & 2),
            latest=read_int(fields, "l", hi=limits.max_round),
        )


def _model_with_view_fields(round_: int, params: torch.Tensor, view: ViewDelta) -> dict[str, Any]:
    """The wire fields of a MoDeST model transfer (trained or aggregated): round, vector, view delta."""
    return {"r": round_, "p": vector_bytes(params), **view.to_fields()}


def _read_model_with_view(fields: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """The checked constructor arguments of a MoDeST model transfer."""
    return {
        "round": read_int(fields, "r", hi=limits.max_round),
        "params": read_vector(fields, "p", dim=limits.dim),
        "view": ViewDelta.from_fields(fields, limits),
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainedModel:
    """A trainer's model after local training in ``round``, sent to the aggregators of ``round + 1``."""

    TYPE: ClassVar[str] = "modest-trained"
    round: int
    params: torch.Tensor
    view: ViewDelta = EMPTY_VIEW

    def __post_init__(self) -> None:
        _check_params("TrainedModel", self.params)

    def to_fields(self) -> dict[str, Any]:
        return _model_with_view_fields(self.round, self.params, self.view)

    @classmethod
    def from_fields(cls, fields: dict[str, Any], limits: Limits) -> TrainedModel:
        return cls(**_read_model_with_view(fields, limits))


@dataclass(frozen=True, slots=True, kw_only=True)
class AggregatedModel:
    """The model of ``round``, aggregated by one of its aggregators and sent to that round's trainers."""

    TYPE: ClassVar[str] = "modest-aggregated"
    round: int
    params: torch.Tensor
    view: ViewDelta = EMPTY_VIEW

    def __post_init__(self) -> None:
        _check_params("AggregatedModel", self.params)

    def to_fields(self) -> dict[str, Any]:
        return _model_with_view_fields(self.round, self.params, self.view)

    @classmethod
    def from_fields(cls, fields: dict[str, Any], limits: Limits) -> AggregatedModel:
        return cls(**_read_model_with_view(fields, limits))


def _record_fields(message: Join | Leave) -> dict[str, Any]:
    out: dict[str, Any] = {"c": message.counter, "r": message.round}
    if message.sig:
        out["g"] = message.sig
    return out


def _read_record(fields: dict[str, Any], limits: Limits, *, lo: int) -> tuple[int, int, bytes]:
    counter = read_int(fields, "c", lo=lo, hi=MAX_COUNTER)
    round_ = read_int(fields, "r", hi=limits.max_round) if "r" in fields else 0
    sig = fields.get("g", b"")
    if type(sig) is not bytes or len(sig) not in (0, SIGNATURE_BYTES):
        raise WireError("bad-field", f"a membership signature must be {SIGNATURE_BYTES} bytes")
    return counter, round_, sig


@dataclass(frozen=True, slots=True, kw_only=True)
class Join:
    """The sender joins (again): ``counter`` is its new, odd, membership counter; ``round`` and ``sig`` make
    it the sender's signed membership record (see :mod:`phalanx.gossip.membership`)."""

    TYPE: ClassVar[str] = "join"
    counter: int
    round: int = 0
    sig: bytes = b""

    def __post_init__(self) -> None:
        if self.counter % 2 != 1:
            raise ValueError("Join.counter must be odd")

    def to_fields(self) -> dict[str, Any]:
        return _record_fields(self)

    @classmethod
    def from_fields(cls, fields: dict[str, Any], limits: Limits) -> Join:
        counter, round_, sig = _read_record(fields, limits, lo=1)
        if counter % 2 != 1:
            raise WireError("bad-field", "a join counter must be odd")
        return cls(counter=counter, round=round_, sig=sig)


@dataclass(frozen=True, slots=True, kw_only=True)
class Leave:
    """The sender leaves: ``counter`` is its new, even, membership counter (signed like :class:`Join`)."""

    TYPE: ClassVar[str] = "leave"
    counter: int
    round: int = 0
    sig: bytes = b""

    def __post_init__(self) -> None:
        if self.counter % 2 != 0 or self.counter < 2:
            raise ValueError("Leave.counter must be even and >= 2")

    def to_fields(self) -> dict[str, Any]:
        return _record_fields(self)

    @classmethod
    def from_fields(cls, fields: dict[str, Any], limits: Limits) -> Leave:
        counter, round_, sig = _read_record(fields, limits, lo=2)
        if counter % 2 != 0:
            raise WireError("bad-field", "a leave counter must be even")
        return cls(counter=counter, round=round_, sig=sig)


@dataclass(frozen=True, slots=True, kw_only=True)
class ViewUpdate:
    """A membership view (the full one, answering a :class:`Join`) and the sender's current round."""

    TYPE: ClassVar[str] = "view"
    round: int
    view: ViewDelta

    def to_fields(self) -> dict[str, Any]:
        return {"r": self.round, **self.view.to_fields()}

    @classmethod
    def from_fields(cls, fields: dict[str, Any], limits: Limits) -> ViewUpdate:
        return cls(
            round=read_int(fields, "r", hi=limits.max_round), view=ViewDelta.from_fields(fields, limits)
        )


# ---------------------------------------------------------------- compressed model payloads (issue 18)

#: The message types whose ``params`` the compression channel may carry (gossip/compression/channel.py).
MODEL_TYPES: tuple[str, ...] = (ModelUpdate.TYPE, TrainedModel.TYPE, AggregatedModel.TYPE)


@dataclass(frozen=True, slots=True, kw_only=True)
class Compressed:
    """A model message whose vector travels through the sender's compression channel.

    ``kind`` is the carried message's type and ``fields`` its wire fields without the vector (round, step,
    view), checked again when the channel rebuilds it. ``seq`` numbers the sender's public copy ``x_hat``
    that this message brings the receiver to. Exactly one of:

    - ``encoded``: a codec's encoding of ``x_hat[seq] - x_hat[seq - 1]`` (difference coding; the receiver
      must hold the sender's ``x_hat[seq - 1]``);
    - ``params``: ``x_hat[seq]`` itself, dense float32 (a keyframe, for a receiver not known to hold the
      previous copy).

    The codec fields are parsed here (:meth:`Encoded.from_fields`, bounded); decoding them needs the
    receiver's codec and replica, which is the channel's job.
    """

    TYPE: ClassVar[str] = "z"
    kind: str
    fields: dict[str, Any]
    seq: int
    encoded: Encoded | None = None
    params: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.encoded is None) == (self.params is None):
            raise ValueError("Compressed carries exactly one of encoded and params")
        if self.params is not None:
            _check_params("Compressed", self.params)

    def to_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"k": self.kind, "f": self.fields, "q": self.seq}
        if self.encoded is not None:
            out["z"] = self.encoded.to_fields()
        else:
            assert self.params is not None
            out["p"] = vector_bytes(self.params)
        return out

    @classmethod
    def from_fields(cls, fields: dict[str, Any], limits: Limits) -> Compressed:
        kind = fields.get("k")
        if kind not in MODEL_TYPES:
            raise WireError("bad-field", f"'k' must name a model message type, got {kind!r}"[:200])
        inner = fields.get("f")
        if not isinstance(inner, dict) or "p" in inner:
            raise WireError("bad-field", "'f' must be a map of the carried message's fields, without 'p'")
        seq = read_int(fields, "q", hi=2**48)
        if ("z" in fields) == ("p" in fields):
            raise WireError("bad-field", "a compressed message carries exactly one of 'z' and 'p'")
        if "p" in fields:
            return cls(kind=kind, fields=inner, seq=seq, params=read_vector(fields, "p", dim=limits.dim))
        try:
            encoded = Encoded.from_fields(fields["z"])
        except CodecError as exc:
            raise WireError(f"codec-{exc.reason}", str(exc)) from None
        if seq < 1:
            raise WireError("bad-field", "a difference has a sequence number >= 1")
        return cls(kind=kind, fields=inner, seq=seq, encoded=encoded)


# Every message type (extend as a union: ModelUpdate | Ping | ...).
Message = ModelUpdate | Ping | Pong | TrainedModel | AggregatedModel | Join | Leave | ViewUpdate | Compressed

MESSAGE_TYPES: dict[str, Any] = {
    ModelUpdate.TYPE: ModelUpdate,
    Ping.TYPE: Ping,
    Pong.TYPE: Pong,
    TrainedModel.TYPE: TrainedModel,
    AggregatedModel.TYPE: AggregatedModel,
    Join.TYPE: Join,
    Leave.TYPE: Leave,
    ViewUpdate.TYPE: ViewUpdate,
    Compressed.TYPE: Compressed,
}


def encode(message: Message) -> bytes:
    """The msgpack body of a message (frame it with :func:`phalanx.gossip.wire.frame` to send it)."""
    return pack(message.TYPE, message.to_fields())


def decode(body: bytes | bytearray | memoryview, limits: Limits) -> Message:
    """Decode and validate one body; raises :class:`WireError` for anything not a valid message."""
    fields = unpack(body, limits)
    cls = MESSAGE_TYPES.get(fields["t"])
    if cls is None:
        raise WireError("unknown-type", f"unknown message type {fields['t']!r}")
    message: Message = cls.from_fields(fields, limits)
    return message


#: Binary fields from this many bytes on are sized, not copied, by :func:`encoded_size`.
_SIZED_BIN = 256


def _bin_length(n: int) -> int:
    """Bytes msgpack spends on a ``bin`` of n bytes: bin8 / bin16 / bin32 header, then the bytes."""
    return n + (2 if n < 1 << 8 else 3 if n < 1 << 16 else 5)


def encoded_size(message: Message) -> int:
    """Bytes this message takes on the wire, frame header included (what the simulator counts).

    The message is encoded for real, except that each large binary field (a model vector) is encoded as
    an empty ``bin`` and its exact msgpack length added back: the same count, without copying the model
    (``tests/gossip/test_wire.py`` checks it against ``4 + len(encode(message))``).
    """
    fields = message.to_fields()
    extra = 0
    for key, value in fields.items():
        if isinstance(value, bytes | bytearray | memoryview):
            n = value.nbytes if isinstance(value, memoryview) else len(value)
            if n >= _SIZED_BIN:
                fields[key] = b""
                extra += _bin_length(n) - _bin_length(0)
    return 4 + len(pack(message.TYPE, fields)) + extra
