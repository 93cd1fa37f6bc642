"""Checkpoints: a node's state after a round, written atomically, read back with the same care as wire input.

File format (all integers big-endian)::

    b"PHXCKPT1"                  8-byte magic
    u32 H                        header length
    H bytes                      msgpack map: {"round", "dim", "vectors": [names], "steps", "peer_id",
                                 "view": [peer ids], "counters": {str: int}, "bans": {peer: seconds left},
                                 "extra": {...}}
    len(vectors) * dim * 4 bytes raw little-endian float32, one vector after another
    u32 CRC-32                   of everything before it

Writing goes to a temporary file in the same directory, is fsynced, then renamed over the old checkpoint
(and the directory fsynced), so a crash at any moment leaves either the old or the new checkpoint whole.
No pickle: tensors are raw float32 bytes.

Two generations are kept: before the new file is renamed into place, the current one becomes
``checkpoint.prev.bin``. :func:`load_latest` reads the newest and, if it is missing or damaged, falls back
to the previous one and says so (:attr:`Loaded.skipped`), so a torn disk or a bad write costs a round, not
the node's state. A checkpoint is read with the care of wire input: a valid checksum does not make a
header's fields the right types, nor the parameters finite; anything wrong is one :class:`CheckpointError`.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import torch

MAGIC = b"PHXCKPT1"
_U32 = struct.Struct(">I")
MAX_HEADER = 16 << 20
FILENAME = "checkpoint.bin"
MAX_ENTRIES = 1_000_000  # view entries, counters and bans a header may hold


class CheckpointError(ValueError):
    """A checkpoint file that is damaged or does not fit this node."""


@dataclass(slots=True, kw_only=True)
class Checkpoint:
    round: int
    params: torch.Tensor
    momentum: torch.Tensor
    steps: int = 0
    peer_id: str = ""
    view: list[str] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    bans: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def _raw(vector: torch.Tensor) -> bytes:
    return vector.detach().cpu().contiguous().numpy().astype("<f4", copy=False).tobytes()


def to_bytes(ckpt: Checkpoint) -> bytes:
    dim = int(ckpt.params.numel())
    if ckpt.momentum.numel() != dim:
        raise CheckpointError("params and momentum differ in length")
    header = msgpack.packb(
        {
            "round": ckpt.round,
            "dim": dim,
            "vectors": ["params", "momentum"],
            "steps": ckpt.steps,
            "peer_id": ckpt.peer_id,
            "view": list(ckpt.view),
            "counters": dict(ckpt.counters),
            "bans": dict(ckpt.bans),
            "extra": dict(ckpt.extra),
        },
        use_bin_type=True,
    )
    body = MAGIC + _U32.pack(len(header)) + header + _raw(ckpt.params) + _raw(ckpt.momentum)
    return body + _U32.pack(zlib.crc32(body))


def _header_field(header: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = header.get(key, default)
    if type(value) is not kind or (isinstance(value, list | dict) and len(value) > MAX_ENTRIES):
        what = {int: "an integer", str: "a string", list: "a list", dict: "a map"}[kind]
        raise CheckpointError(f"checkpoint header field {key!r} must be {what}")
    return value


def _check_header(header: dict[str, Any]) -> dict[str, Any]:
    """The header's optional fields, each checked for its type (and range), as Checkpoint arguments."""
    steps = _header_field(header, "steps", int, 0)
    peer_id = _header_field(header, "peer_id", str, "")
    view = _header_field(header, "view", list, [])
    counters = _header_field(header, "counters", dict, {})
    bans = _header_field(header, "bans", dict, {})
    extra = _header_field(header, "extra", dict, {})
    if steps < 0:
        raise CheckpointError("checkpoint header field 'steps' is negative")
    if not all(type(p) is str for p in view):
        raise CheckpointError("checkpoint header field 'view' holds a non-string peer id")
    if not all(type(k) is str and type(v) is int for k, v in counters.items()):
        raise CheckpointError("checkpoint header field 'counters' is not a map of names to integers")
    if not all(type(k) is str and type(v) in (int, float) and math.isfinite(v) for k, v in bans.items()):
        raise CheckpointError("checkpoint header field 'bans' is not a map of peer ids to seconds")
    return {
        "steps": steps,
        "peer_id": peer_id,
        "view": list(view),
        "counters": dict(counters),
        "bans": {k: float(v) for k, v in bans.items()},
        "extra": dict(extra),
    }


def from_bytes(data: bytes, *, dim: int | None = None) -> Checkpoint:
    if len(data) < len(MAGIC) + 8 or not data.startswith(MAGIC):
        raise CheckpointError("not a phalanx checkpoint")
    (crc,) = _U32.unpack(data[-4:])
    if zlib.crc32(data[:-4]) != crc:
        raise CheckpointError("checkpoint is damaged (CRC mismatch)")
    (hlen,) = _U32.unpack(data[8:12])
    if hlen > MAX_HEADER or 12 + hlen > len(data) - 4:
        raise CheckpointError("checkpoint header length out of range")
    try:
        header = msgpack.unpackb(data[12 : 12 + hlen], raw=False, strict_map_key=True, max_ext_len=0)
    except Exception as exc:
        raise CheckpointError(f"checkpoint header unreadable ({type(exc).__name__})") from None
    if not isinstance(header, dict) or header.get("vectors") != ["params", "momentum"]:
        raise CheckpointError("checkpoint header malformed")
    d = header.get("dim")
    rnd = header.get("round")
    if type(d) is not int or type(rnd) is not int or d < 1 or rnd < 0:
        raise CheckpointError("checkpoint header malformed")
    fields = _check_header(header)
    if dim is not None and d != dim:
        raise CheckpointError(f"checkpoint is for a model of {d} parameters, this node's has {dim}")
    payload = data[12 + hlen : -4]
    if len(payload) != 2 * 4 * d:
        raise CheckpointError("checkpoint vectors truncated")
    array = np.frombuffer(payload, dtype="<f4").astype(np.float32)
    if not np.isfinite(array).all():
        raise CheckpointError("checkpoint holds NaN or infinite parameters")
    tensor = torch.from_numpy(array)
    return Checkpoint(round=rnd, params=tensor[:d].clone(), momentum=tensor[d:].clone(), **fields)


def previous_path(path: Path) -> Path:
    """Where the generation before ``path``'s is kept: ``checkpoint.bin`` -> ``checkpoint.prev.bin``."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def write_atomic(path: Path, data: bytes, *, keep_previous: bool = False) -> None:
    """Replace ``path`` by ``data``: temp file in the same directory, fsync, rename, fsync the directory.

    With ``keep_previous``, the file being replaced is first renamed to :func:`previous_path`; a crash
    between the two renames leaves the previous generation whole and the newest missing, which
    :func:`load_latest` handles as a fallback.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous:
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, previous_path(path))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(path: Path, ckpt: Checkpoint) -> None:
    """Write ``ckpt`` to ``path`` atomically, keeping the checkpoint it replaces as the previous generation."""
    write_atomic(path, to_bytes(ckpt), keep_previous=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class Loaded:
    """A checkpoint read back, where from, and why a newer generation was passed over (for the log)."""

    checkpoint: Checkpoint
    path: Path
    skipped: str = ""  # empty when the newest generation was read

    @property
    def fell_back(self) -> bool:
        return bool(self.skipped)


def _read(path: Path, dim: int | None) -> Checkpoint | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint ({exc.strerror or type(exc).__name__})") from None
    return from_bytes(data, dim=dim)


def load_latest(path: Path, *, dim: int | None = None) -> Loaded | None:
    """The newest readable generation at ``path``, or None if there is none yet.

    Falls back to the previous generation when the newest is missing or damaged, naming the reason in
    :attr:`Loaded.skipped`; raises :class:`CheckpointError` (one line, naming both files) when a checkpoint
    exists but no generation is usable.
    """
    previous = previous_path(path)
    try:
        newest = _read(path, dim)
    except CheckpointError as exc:
        problem = f"{path} is unusable: {exc}"
        try:
            older = _read(previous, dim)
        except CheckpointError as exc2:
            raise CheckpointError(f"{problem}; the previous generation {previous} too: {exc2}") from None
        if older is None:
            raise CheckpointError(f"{problem} (and there is no previous generation)") from None
        return Loaded(checkpoint=older, path=previous, skipped=problem)
    if newest is not None:
        return Loaded(checkpoint=newest, path=path)
    older = _read(previous, dim)  # a crash between save's two renames: only the previous one is whole
    if older is None:
        return None
    return Loaded(checkpoint=older, path=previous, skipped=f"{path} is missing")


def load(path: Path, *, dim: int | None = None) -> Checkpoint | None:
    """The newest usable checkpoint at ``path`` (see :func:`load_latest`), or None if there is none yet."""
    loaded = load_latest(path, dim=dim)
    return None if loaded is None else loaded.checkpoint
