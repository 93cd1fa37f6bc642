"""The wire format's rules: length-prefixed frames, msgpack limits, and checked field readers.

A frame is a 4-byte big-endian length N followed by N bytes of body. The body is one msgpack map
``{"v": VERSION, "t": TYPE, ...fields}``. Model vectors are one ``bin`` field of raw little-endian float32.

Everything a peer sends is decoded under explicit limits and checked field by field; any problem raises
:class:`WireError`, whose ``reason`` is a short stable code for counting rejections. Nothing here ever
unpickles or evaluates anything.
"""

from __future__ import annotations

import math
import re
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


#: Objects (scalars and containers) a message may hold besides its view: the envelope and a handful of fields.
BASE_ITEMS = 64
#: A view entry is at most four objects (peer id, active round, counter, signature), one in each array.
ITEMS_PER_VIEW_ENTRY = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Bounds every decode obeys. ``dim`` is the model's parameter count: model vectors must match it.

    ``max_view`` is the largest membership view a message may carry; the frame and the structural limits
    follow from it unless given. A protocol whose messages carry no view (D-PSGD) uses
    :meth:`model_only`, whose frame holds one model vector and a small envelope and nothing else.

    ``max_items`` bounds the number of msgpack objects in one body and ``max_depth`` the nesting of
    non-empty containers (an empty one is a leaf; the top-level map is depth 1): both
    are checked by a scan over the bytes *before* msgpack allocates anything (see :func:`check_structure`),
    so a body of millions of tiny containers costs a few microseconds to refuse, not seconds and gigabytes.
    """

    dim: int
    max_view: int = 100_000
    max_round: int = 2**48
    max_frame: int = field(default=0)
    max_items: int = field(default=0)
    max_depth: int = 4

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"Limits.dim must be >= 1, got {self.dim}")
        if self.max_view < 0 or self.max_depth < 1 or self.max_items < 0 or self.max_frame < 0:
            raise ValueError("Limits: max_view, max_items and max_frame must be >= 0 and max_depth >= 1")
        if self.max_frame == 0:
            # One model vector, plus room for a membership view of max_view entries and the envelope.
            # a signed view entry: a peer id (~54 bytes), two integers and a 64-byte signature
            object.__setattr__(self, "max_frame", 4 * self.dim + 160 * self.max_view + 4096)
        if self.max_items == 0:
            object.__setattr__(self, "max_items", BASE_ITEMS + ITEMS_PER_VIEW_ENTRY * self.max_view)

    @classmethod
    def model_only(cls, dim: int, *, max_round: int = 2**48) -> Limits:
        """Limits for protocols whose messages are a model vector and a few integers (the D-PSGD family)."""
        return cls(dim=dim, max_view=0, max_round=max_round)

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
    """Decode a body into a map with explicit msgpack limits; checks version and the type field's form.

    The body's structure is scanned first (:func:`check_structure`): msgpack only runs on a body whose
    object count, nesting, widths and lengths are all within the limits.
    """
    if len(body) > limits.max_frame:
        raise WireError(
            "frame-too-large", f"body of {len(body)} bytes exceeds the limit of {limits.max_frame}"
        )
    check_structure(body, limits)
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


# Each msgpack lead byte's shape: (kind, n). Kinds: scalar of n bytes in all; str/bin whose length is in
# the next n bytes; array/map whose count is in the next n bytes (0: the count is in the lead byte itself).
_SCALAR, _FIXSTR, _STR, _BIN, _FIXARRAY, _ARRAY, _FIXMAP, _MAP, _BAD = range(9)


def _lead_table() -> list[tuple[int, int]]:
    table = [(_BAD, 0)] * 256
    one = (_SCALAR, 1)  # one shared tuple for every one-byte object: the scan tests it by identity
    for b in range(0x00, 0x80):
        table[b] = one  # positive fixint
    for b in range(0xE0, 0x100):
        table[b] = one  # negative fixint
    for b in range(0x80, 0x90):
        table[b] = (_FIXMAP, 0)
    for b in range(0x90, 0xA0):
        table[b] = (_FIXARRAY, 0)
    for b in range(0xA0, 0xC0):
        table[b] = (_FIXSTR, 0)
    for b in (0xC0, 0xC2, 0xC3):
        table[b] = one  # nil, false, true
    for b, size in ((0xCA, 5), (0xCB, 9), (0xCC, 2), (0xCD, 3), (0xCE, 5), (0xCF, 9)):
        table[b] = (_SCALAR, size)  # floats, unsigned ints
    for b, size in ((0xD0, 2), (0xD1, 3), (0xD2, 5), (0xD3, 9)):
        table[b] = (_SCALAR, size)  # signed ints
    table[0xC4], table[0xC5], table[0xC6] = (_BIN, 1), (_BIN, 2), (_BIN, 4)
    table[0xD9], table[0xDA], table[0xDB] = (_STR, 1), (_STR, 2), (_STR, 4)
    table[0xDC], table[0xDD] = (_ARRAY, 2), (_ARRAY, 4)
    table[0xDE], table[0xDF] = (_MAP, 2), (_MAP, 4)
    for b in (0x80, 0x90, 0xA0):
        table[b] = one  # the empty fixmap, fixarray and fixstr: one byte, nothing inside
    return table  # 0xC1 (never used) and every ext type (0xC7-0xC9, 0xD4-0xD8) stay _BAD


_LEAD = _lead_table()
_ONE_BYTE = _LEAD[0]  # the one tuple every one-byte object's entry is
# Objects of one byte: fixints, nil, booleans, and the empty fixmap, fixarray and fixstr. Runs of them are
# skipped by the regex engine (hostile bodies are made of them), not one Python step each.
_ONE_BYTE_RUN = re.compile(rb"[\x00-\x7f\xe0-\xff\xc0\xc2\xc3\x80\x90\xa0]+")


def check_structure(body: bytes | bytearray | memoryview, limits: Limits) -> None:
    """Walk the msgpack structure of ``body`` without building it; raise :class:`WireError` unless it is
    exactly one object within ``limits``.

    Reasons: ``too-many-items`` for a body over the object budget (the decode bomb's signature); every
    other problem (nesting, widths, lengths, truncation, ext types) is ``malformed``, as msgpack's own
    errors are.

    Every container's declared size is charged against ``limits.max_items`` as soon as its header is read,
    so a hostile body is refused after at most ``max_items`` steps whatever its length: cost
    O(min(bytes, max_items)), no allocation beyond a stack of ``max_depth`` integers. Strings and binaries
    are skipped by their length (never read), so a model vector costs one step.
    """
    data = body if isinstance(body, bytes | bytearray) else memoryview(body).cast("B")
    end = len(data)
    max_items, max_depth, max_bin = limits.max_items, limits.max_depth, limits.max_frame
    max_width = max(limits.max_view, BASE_ITEMS)
    lead = _LEAD
    pos = 0
    items = 1
    pending = [1]  # objects still to read in each open container (the root is a container of one)
    while pending:
        if pending[-1] == 0:
            pending.pop()
            continue
        if pending[-1] > 1 and pos < end and lead[data[pos]] is _ONE_BYTE:
            run = _ONE_BYTE_RUN.match(data, pos, min(end, pos + pending[-1]))
            if run is not None:
                pos = run.end()
                pending[-1] -= pos - run.start()
                continue
        pending[-1] -= 1
        if pos >= end:
            raise WireError("malformed", "body ends inside a msgpack object")
        b = data[pos]
        kind, n = lead[b]
        if kind == _SCALAR:
            pos += n
            continue
        if kind == _FIXSTR:
            size, pos = b & 0x1F, pos + 1
        elif kind in (_FIXARRAY, _FIXMAP):
            size, pos = b & 0x0F, pos + 1
        elif kind == _BAD:
            raise WireError("malformed", f"msgpack type byte 0x{b:02x} is not allowed")
        else:
            if pos + 1 + n > end:
                raise WireError("malformed", "body ends inside a msgpack header")
            size = int.from_bytes(data[pos + 1 : pos + 1 + n], "big")
            pos += 1 + n
        if kind in (_FIXSTR, _STR, _BIN):
            if size > (max_bin if kind == _BIN else MAX_STR):
                raise WireError("malformed", f"a msgpack {'bin' if kind == _BIN else 'str'} of {size} bytes")
            pos += size
            continue
        # a container: charge its children now, before reading (or allocating) any of them; every child
        # takes at least one byte, so a count beyond the bytes left is a lie
        if size > end - pos:
            raise WireError("malformed", f"a msgpack container of {size} entries in {end - pos} bytes")
        if size > max_width:
            raise WireError("malformed", f"a msgpack container of {size} entries exceeds {max_width}")
        if kind in (_FIXMAP, _MAP):
            size *= 2
        items += size
        if items > max_items:
            raise WireError("too-many-items", f"more than {max_items} msgpack objects in one body")
        if size:
            if len(pending) > max_depth:  # pending holds the root's slot and one per open container
                raise WireError("malformed", f"msgpack containers nested deeper than {max_depth}")
            pending.append(size)
    if pos != end:
        raise WireError(
            "malformed", f"{end - pos} bytes after the msgpack object" if pos < end else "truncated"
        )


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
