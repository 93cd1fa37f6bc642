"""Every message type phalanx sends, with its wire encoding and its checked decoding.

Each message is a frozen dataclass with a ``TYPE`` name, ``to_fields()`` and ``from_fields(fields, limits)``;
:data:`MESSAGE_TYPES` is the explicit registry the decoder dispatches on. Add new message types here and
register them at the bottom.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

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


# Every message type (extend as a union: ModelUpdate | Ping | ...).
Message = ModelUpdate

MESSAGE_TYPES: dict[str, Any] = {
    ModelUpdate.TYPE: ModelUpdate,
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


def encoded_size(message: Message) -> int:
    """Bytes this message takes on the wire, frame header included (what the simulator counts)."""
    return 4 + len(encode(message))
