"""Sparsifiers with error feedback: ``topk:FRACTION`` (largest magnitudes) and ``randk:FRACTION`` (random).

Both send ``k = max(1, round(FRACTION * d))`` coordinates of ``acc = vector + residual`` and keep the rest as
the node's new residual, so ``sent + residual == vector + previous residual`` exactly (the coordinates are
copied, never rounded) and nothing is lost, only delayed (error feedback; Stich et al. 2018, Karimireddy et
al. 2019). Neither rescales what it sends: with error feedback a biased contractive compressor is the right
one, and the unscaled values keep a decoded vector within the norm of ``acc``.

Wire: topk sends sorted uint32 indices and float32 values (8k bytes); randk sends only a seed and the
float32 values (4k bytes + 8), the receiver deriving the same indices from the seed
(:func:`.shared.random_indices`, O(d) time and memory on both sides).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
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
from .shared import random_indices


def k_for(fraction: float, dim: int) -> int:
    """How many coordinates a sparsifier keeps of ``dim``: at least one, at most all."""
    return min(dim, max(1, round(fraction * dim)))


def _accumulate(vector: torch.Tensor, state: CodecState) -> torch.Tensor:
    """``vector + residual`` as a fresh tensor (a residual of another length is a programming error)."""
    if state.residual is None or not state.feedback:
        return vector.clone()
    if state.residual.shape != vector.shape:
        raise ValueError(f"residual of {state.residual.numel()} values for a vector of {vector.numel()}")
    return vector + state.residual


def _keep_rest(acc: torch.Tensor, index: torch.Tensor, state: CodecState) -> None:
    acc[index] = 0.0
    state.residual = acc if state.feedback else None
    state.encoded += 1


@dataclass(frozen=True, slots=True)
class TopKCodec:
    """``topk:FRACTION``: the k coordinates of largest magnitude, with error feedback."""

    fraction: float
    name: ClassVar[str] = "topk"

    @property
    def spec(self) -> str:
        return f"topk:{self.fraction:g}"

    def encode(self, vector: torch.Tensor, state: CodecState, rng: torch.Generator) -> Encoded:
        acc = _accumulate(check_vector(vector), state)
        dim = acc.numel()
        if dim >= 2**32:
            raise ValueError("topk indexes vectors of fewer than 2^32 values")
        k = k_for(self.fraction, dim)
        index = torch.topk(acc.abs(), k, sorted=False).indices.sort().values
        values = acc[index]
        data = values.numpy().astype("<f4", copy=False).tobytes()
        raw_index = index.numpy().astype("<u4").tobytes()
        _keep_rest(acc, index, state)
        return Encoded(codec=self.name, dim=dim, count=k, data=data, index=raw_index)

    def decode(self, encoded: Encoded, dim: int, limits: DecodeLimits = DEFAULT_LIMITS) -> torch.Tensor:
        check_header(encoded, self.name, dim)
        k = encoded.count
        if not 1 <= k <= k_for(self.fraction, dim):
            raise CodecError("bad-count", f"k={k}, this node accepts 1..{k_for(self.fraction, dim)} of {dim}")
        if encoded.seed != 0:
            raise CodecError("bad-field", "topk carries no seed")
        check_length("indices", encoded.index, 4 * k)
        check_length("values", encoded.data, 4 * k)
        index = np.frombuffer(encoded.index, dtype="<u4").astype(np.int64)
        if int(index[-1]) >= dim:
            raise CodecError("bad-index", f"index {int(index[-1])} out of range for {dim} values")
        if k > 1 and not bool((np.diff(index) > 0).all()):
            raise CodecError("bad-index", "indices must be unique and sorted")
        values = check_finite("values", float32_from_bytes(encoded.data, k))
        out = torch.zeros(dim, dtype=torch.float32)
        out[torch.from_numpy(index)] = values
        return out


@dataclass(frozen=True, slots=True)
class RandKCodec:
    """``randk:FRACTION``: k coordinates chosen at random from a seed that travels, with error feedback."""

    fraction: float
    name: ClassVar[str] = "randk"

    @property
    def spec(self) -> str:
        return f"randk:{self.fraction:g}"

    def encode(self, vector: torch.Tensor, state: CodecState, rng: torch.Generator) -> Encoded:
        acc = _accumulate(check_vector(vector), state)
        dim = acc.numel()
        k = k_for(self.fraction, dim)
        seed = draw_seed(rng)
        index = torch.from_numpy(random_indices(seed, dim, k))
        data = acc[index].numpy().astype("<f4", copy=False).tobytes()
        _keep_rest(acc, index, state)
        return Encoded(codec=self.name, dim=dim, count=k, seed=seed, data=data)

    def decode(self, encoded: Encoded, dim: int, limits: DecodeLimits = DEFAULT_LIMITS) -> torch.Tensor:
        check_header(encoded, self.name, dim)
        k = k_for(self.fraction, dim)
        if encoded.count != k:
            raise CodecError("bad-count", f"k={encoded.count}, this node's randk sends {k} of {dim}")
        if encoded.index:
            raise CodecError("bad-field", "randk carries no indices (they follow from the seed)")
        check_length("values", encoded.data, 4 * k)
        values = check_finite("values", float32_from_bytes(encoded.data, k))
        out = torch.zeros(dim, dtype=torch.float32)
        out[torch.from_numpy(random_indices(encoded.seed, dim, k))] = values
        return out
