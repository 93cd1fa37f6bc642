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
"""

from __future__ import annotations

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
    if dim is not None and d != dim:
        raise CheckpointError(f"checkpoint is for a model of {d} parameters, this node's has {dim}")
    payload = data[12 + hlen : -4]
    if len(payload) != 2 * 4 * d:
        raise CheckpointError("checkpoint vectors truncated")
    array = np.frombuffer(payload, dtype="<f4").astype(np.float32)
    tensor = torch.from_numpy(array)
    return Checkpoint(
        round=rnd,
        params=tensor[:d].clone(),
        momentum=tensor[d:].clone(),
        steps=int(header.get("steps", 0)),
        peer_id=str(header.get("peer_id", "")),
        view=[str(p) for p in header.get("view", [])],
        counters={str(k): int(v) for k, v in dict(header.get("counters", {})).items()},
        bans={str(k): float(v) for k, v in dict(header.get("bans", {})).items()},
        extra=dict(header.get("extra", {})),
    )


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data``: temp file in the same directory, fsync, rename, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
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
    write_atomic(path, to_bytes(ckpt))


def load(path: Path, *, dim: int | None = None) -> Checkpoint | None:
    """The checkpoint at ``path``, or None if there is none yet."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return from_bytes(data, dim=dim)
