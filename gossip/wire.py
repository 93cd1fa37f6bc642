"""The wire format's rules: length-prefixed frames, msgpack limits, and checked field readers.

A frame is a 4-byte big-endian length N followed by N bytes of body. The body is one msgpack map
``{"v": VERSION, "t": TYPE, ...fields}``. Model vectors are one ``bin`` field of raw little-endian float32.

Everything a peer sends is decoded under explicit limits and checked field by field; any problem raises
:class:`WireError`, whose ``reason`` is a short stable code for counting rejections. Nothing here ever
unpickles or evaluates anything.
"""

from __future__ import annotations

import math
import struct
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import torch

VERSION = 1
FRAME_HEADER = struct.Struct(">I")
MAX_STR = 256


class WireError(ValueError):
    """A peer's bytes that are not a valid message. ``reason`` is a short code for metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Bounds every decode obeys. ``dim`` is the model's parameter count: model vectors must match it."""

    dim: int
    max_view: int = 100_000
    max_round: int = 2**48
    max_frame: int = field(default=0)

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"Limits.dim must be >= 1, got {self.dim}")
        if self.max_frame == 0:
            # One model vector, plus room for a membership view of max_view entries and the envelope.
            object.__setattr__(self, "max_frame", 4 * self.dim + 64 * self.max_view + 4096)

    @property
    def max_body(self) -> int:
        return self.max_frame


def frame(body: bytes) -> bytes:
    """Prefix ``body`` with its length."""
    return FRAME_HEADER.pack(len(body)) + body


def frame_length(header: bytes, limits: Limits) -> int:
    """The body length announced by a 4-byte frame header, checked against the limits before reading on."""
    if len(header) != FRAME_HEADER.size:
        raise WireError("truncated", f"frame header of {len(header)} bytes")
    (length,) = FRAME_HEADER.unpack(header)
    if length == 0:
        raise WireError("empty-frame", "frame of length 0")
    if length > limits.max_frame:
        raise WireError("frame-too-large", f"frame of {length} bytes exceeds the limit of {limits.max_frame}")
    return int(length)


def pack(type_name: str, fields: dict[str, Any]) -> bytes:
    return msgpack.packb({"v": VERSION, "t": type_name, **fields}, use_bin_type=True)


def unpack(body: bytes | bytearray | memoryview, limits: Limits) -> dict[str, Any]:
    """Decode a body into a map with explicit msgpack limits; checks version and the type field's form."""
    if len(body) > limits.max_frame:
        raise WireError(
            "frame-too-large", f"body of {len(body)} bytes exceeds the limit of {limits.max_frame}"
        )
    try:
        obj = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            max_bin_len=limits.max_frame,
            max_str_len=MAX_STR,
            max_array_len=limits.max_view,
            max_map_len=max(64, limits.max_view),
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types (ExtraData, FormatError, StackError, ValueError...)
        raise WireError("malformed", f"not a msgpack body ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise WireError("malformed", "body is not a map")
    if type(obj.get("v")) is not int or obj["v"] != VERSION:
        raise WireError("version", f"unsupported version {obj.get('v')!r}")
    if not isinstance(obj.get("t"), str):
        raise WireError("malformed", "missing type field")
    return obj


def read_int(fields: dict[str, Any], key: str, *, lo: int = 0, hi: int = 2**48) -> int:
    value = fields.get(key)
    if type(value) is not int or not lo <= value <= hi:
        raise WireError("bad-field", f"{key!r} must be an integer in [{lo}, {hi}], got {value!r}"[:200])
    return value


def read_float(fields: dict[str, Any], key: str) -> float:
    value = fields.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise WireError("bad-field", f"{key!r} must be a finite number"[:200])
    return float(value)


def read_str(fields: dict[str, Any], key: str) -> str:
    value = fields.get(key)
    if not isinstance(value, str) or not value:
        raise WireError("bad-field", f"{key!r} must be a non-empty string")
    return value


def vector_bytes(vector: torch.Tensor) -> memoryview:
    """The raw little-endian float32 bytes of a 1-D tensor, without a copy where possible."""
    array = vector.detach().cpu().contiguous().numpy()
    if sys.byteorder != "little":  # pragma: no cover - every platform we run on is little-endian
        array = array.astype("<f4")
    return memoryview(array.data).cast("B")


def read_vector(fields: dict[str, Any], key: str, *, dim: int) -> torch.Tensor:
    """A float32 model vector from a ``bin`` field: length must be exactly ``dim`` and every value finite.

    The tensor shares memory with the decoded bytes (read-only): callers copy before writing into it.
    """
    raw = fields.get(key)
    if not isinstance(raw, bytes):
        raise WireError("bad-field", f"{key!r} must be bytes")
    if len(raw) != 4 * dim:
        raise WireError("wrong-dimension", f"{key!r} holds {len(raw)} bytes, the model needs {4 * dim}")
    array = np.frombuffer(raw, dtype="<f4")
    if not np.isfinite(array).all():
        raise WireError("non-finite", f"{key!r} holds NaN or infinite values")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only buffer: we never write into it
        return torch.frombuffer(raw, dtype=torch.float32)
