"""``lowrank:RANK``: PowerSGD (Vogels, Karimireddy and Jaggi, 2019) on the matrix-shaped parts of a model.

The codec knows the :class:`~.base.Layout` of the flat vector. A part of shape ``(n, ...)`` is viewed as an
``n x m`` matrix ``M`` (``m`` the product of the other dimensions); it is compressed when its rank-``r``
factors are smaller than it, ``(n + m) r < n m`` with ``r = min(RANK, n, m)``; every other part (biases,
1-D parameters, tiny matrices) travels as raw float32.

One power iteration per message, warm-started from the previous message's ``Q`` (kept in the node's
state), with error feedback::

    M  = part of (vector + residual)
    P  = orthonormalise(M Q_prev)          # reduced QR
    Q  = M^T P
    sent = P Q^T,   residual = M - P Q^T,   Q_prev <- Q

The receiver rebuilds ``P Q^T`` from the two factors; the payload's length follows from the layout and the
rank alone, so it is checked before anything is allocated, and each rebuilt part is the size of that part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .base import (
    DEFAULT_LIMITS,
    CodecError,
    CodecState,
    DecodeLimits,
    Encoded,
    Layout,
    check_finite,
    check_header,
    check_length,
    check_vector,
    float32_from_bytes,
)


@dataclass(frozen=True, slots=True)
class _Part:
    offset: int
    rows: int
    cols: int
    rank: int  # 0: travels uncompressed

    @property
    def size(self) -> int:
        return self.rows * self.cols

    @property
    def wire_values(self) -> int:
        return (self.rows + self.cols) * self.rank if self.rank else self.size


def _plan(layout: Layout, rank: int) -> tuple[_Part, ...]:
    parts = []
    offset = 0
    for shape in layout.shapes:
        rows = shape[0]
        cols = math.prod(shape[1:]) if len(shape) > 1 else 1
        r = min(rank, rows, cols)
        compress = len(shape) > 1 and (rows + cols) * r < rows * cols
        parts.append(_Part(offset=offset, rows=rows, cols=cols, rank=r if compress else 0))
        offset += rows * cols
    return tuple(parts)


@dataclass(frozen=True, slots=True)
class LowRankCodec:
    """``lowrank:RANK`` over the parameters described by ``layout``."""

    rank: int
    layout: Layout
    name: ClassVar[str] = "lowrank"
    _parts: tuple[_Part, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError("lowrank rank must be >= 1")
        object.__setattr__(self, "_parts", _plan(self.layout, self.rank))

    @property
    def spec(self) -> str:
        return f"lowrank:{self.rank}"

    @property
    def warm_size(self) -> int:
        """Length of the warm-start vector a state keeps (all the Q factors, concatenated)."""
        return sum(p.cols * p.rank for p in self._parts)

    @property
    def wire_values(self) -> int:
        """How many float32 values one encoding carries."""
        return sum(p.wire_values for p in self._parts)

    def encode(self, vector: torch.Tensor, state: CodecState, rng: torch.Generator) -> Encoded:
        vector = check_vector(vector)
        dim = self.layout.dim
        if vector.numel() != dim:
            raise ValueError(f"vector of {vector.numel()} values for a layout of {dim}")
        if state.residual is not None and state.residual.shape != vector.shape:
            raise ValueError("residual does not fit this layout")
        acc = vector if state.residual is None or not state.feedback else vector + state.residual
        warm = state.warm
        if warm is None or warm.numel() != self.warm_size:
            warm = torch.randn(self.warm_size, generator=rng, dtype=torch.float32)
        residual = torch.zeros(dim, dtype=torch.float32)
        new_warm = torch.empty_like(warm)
        pieces: list[torch.Tensor] = []
        q_at = 0
        for part in self._parts:
            block = acc[part.offset : part.offset + part.size]
            if not part.rank:
                pieces.append(block)
                continue
            matrix = block.view(part.rows, part.cols)
            q_prev = warm[q_at : q_at + part.cols * part.rank].view(part.cols, part.rank)
            p = torch.linalg.qr(matrix @ q_prev, mode="reduced").Q.contiguous()
            q = (matrix.T @ p).contiguous()
            residual[part.offset : part.offset + part.size] = (matrix - p @ q.T).view(-1)
            # the warm start only needs q's span: unit columns keep repeated starts from compounding the
            # matrix's scale (a 4e16 entry overflowed float32 after two rounds)
            norms = torch.linalg.vector_norm(q, dim=0).clamp_min(torch.finfo(torch.float32).tiny)
            new_warm[q_at : q_at + q.numel()] = (q / norms).view(-1)
            pieces += [p.view(-1), q.view(-1)]
            q_at += q.numel()
        state.residual = residual if state.feedback else None
        state.warm = new_warm
        state.encoded += 1
        data = torch.cat(pieces).numpy().astype("<f4", copy=False).tobytes()
        return Encoded(codec=self.name, dim=dim, count=self.rank, data=data)

    def decode(self, encoded: Encoded, dim: int, limits: DecodeLimits = DEFAULT_LIMITS) -> torch.Tensor:
        check_header(encoded, self.name, dim)
        if dim != self.layout.dim:
            raise CodecError("wrong-dimension", f"layout holds {self.layout.dim} values, the model {dim}")
        if encoded.count != self.rank or encoded.count > limits.max_rank:
            raise CodecError("bad-count", f"rank {encoded.count}, this node uses {self.rank}")
        if encoded.seed != 0 or encoded.index:
            raise CodecError("bad-field", "lowrank carries no seed or index")
        check_length("factors", encoded.data, 4 * self.wire_values)
        values = check_finite("factors", float32_from_bytes(encoded.data, self.wire_values))
        out = torch.empty(dim, dtype=torch.float32)
        at = 0
        for part in self._parts:
            target = out[part.offset : part.offset + part.size]
            if not part.rank:
                target.copy_(values[at : at + part.size])
                at += part.size
                continue
            p = values[at : at + part.rows * part.rank].view(part.rows, part.rank)
            at += p.numel()
            q = values[at : at + part.cols * part.rank].view(part.cols, part.rank)
            at += q.numel()
            target.copy_((p @ q.T).view(-1))
        return check_finite("rebuilt matrices", out)
