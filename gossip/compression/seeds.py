"""``seeds:K``: shared-randomness projection, as Ferret (Shu et al., ICML 2025) reconstructs updates.

The sender draws one seed, derives K random directions ``v_1 .. v_K`` in R^d from it, and sends the seed and
the K scalars ``g_k = <x, v_k>``; the receiver derives the same directions from the seed and rebuilds

    x' = (1 / K) sum_k g_k v_k.

Assumptions and choices (see docs/compression.md):

- Directions are Rademacher (entries +-1 from the raw Philox stream, :func:`.shared.sign_blocks`), so
  ``E[v v^T] = I`` and the rebuild is unbiased, ``E[x'] = x``, with exactly
  ``E||x' - x||^2 = (d - 1) ||x||^2 / K`` (one direction's estimate has variance ``||x||^2 - x_i^2`` in
  coordinate i, since ``v_i^2 = 1``). Ferret uses Gaussian-like
  bases; Rademacher ones have the same mean and a smaller variance, and can be derived bit-exactly on any
  machine from integer bits alone.
- One seed per message (a fresh one from the caller's generator), not a fixed pool: FedKSeed's fixed pool
  of K candidate seeds exists to let a zeroth-order learner replay a history of scalar steps; phalanx's
  learners are first-order, which is Ferret's setting.
- No error feedback: an unbiased compressor with variance (d/K) ||x||^2 is not contractive, and error
  feedback on it diverges. It is meant for what Ferret sends, a local *update* (the difference of two
  models), averaged over many peers; sent raw on model parameters it is noise unless K is close to d.
- Decoding costs K d operations, so K is capped by :class:`~.base.DecodeLimits` ``max_seeds`` as well as
  by the receiver's own K; memory stays at ``block * d`` bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .base import (
    DEFAULT_LIMITS,
    CodecError,
    CodecState,
    DecodeLimits,
    Encoded,
    check_finite,
    check_header,
    check_length,
    check_vector,
    draw_seed,
    float32_from_bytes,
)
from .shared import sign_blocks

_BLOCK = 8  # directions generated at once: 8 d bytes of bits and 32 d bytes of float32 at a time


def project(vector: torch.Tensor, seed: int, count: int) -> torch.Tensor:
    """The K coordinates ``<vector, v_k>`` of ``vector`` on the directions derived from ``seed``."""
    dim = vector.numel()
    total = vector.sum()
    out = []
    for bits in sign_blocks(seed, dim, count, _BLOCK):
        # <x, 2b - 1> = 2 <x, b> - sum(x)
        out.append(2.0 * (torch.from_numpy(bits).to(torch.float32) @ vector) - total)
    return torch.cat(out)


def rebuild(coords: torch.Tensor, seed: int, dim: int) -> torch.Tensor:
    """``(1 / K) sum_k coords_k v_k`` for the directions derived from ``seed``."""
    count = coords.numel()
    acc = torch.zeros(dim, dtype=torch.float32)
    at = 0
    for bits in sign_blocks(seed, dim, count, _BLOCK):
        block = coords[at : at + bits.shape[0]]
        at += bits.shape[0]
        # sum_k g_k (2 b_k - 1) = 2 B^T g - sum(g)
        acc += 2.0 * (block @ torch.from_numpy(bits).to(torch.float32)) - block.sum()
    return acc / count


@dataclass(frozen=True, slots=True)
class SeedsCodec:
    """``seeds:K``: a seed and K float32 scalars travel, whatever the model's size."""

    count: int
    name: ClassVar[str] = "seeds"

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("seeds K must be >= 1")

    @property
    def spec(self) -> str:
        return f"seeds:{self.count}"

    def encode(self, vector: torch.Tensor, state: CodecState, rng: torch.Generator) -> Encoded:
        vector = check_vector(vector)
        seed = draw_seed(rng)
        coords = project(vector, seed, self.count)
        state.encoded += 1
        data = coords.numpy().astype("<f4", copy=False).tobytes()
        return Encoded(codec=self.name, dim=vector.numel(), count=self.count, seed=seed, data=data)

    def decode(self, encoded: Encoded, dim: int, limits: DecodeLimits = DEFAULT_LIMITS) -> torch.Tensor:
        check_header(encoded, self.name, dim)
        if encoded.count != self.count or encoded.count > limits.max_seeds:
            raise CodecError("bad-count", f"K={encoded.count}, this node uses {self.count}")
        if encoded.index:
            raise CodecError("bad-field", "seeds carries no indices")
        check_length("coordinates", encoded.data, 4 * self.count)
        coords = check_finite("coordinates", float32_from_bytes(encoded.data, self.count))
        return check_finite("rebuilt vector", rebuild(coords, encoded.seed, dim))
