"""phalanx.gossip.compression: codecs that shrink the vectors nodes exchange, pure torch/numpy, no I/O.

Codecs
    Chosen by a spec ``NAME[:PARAMS]`` (:func:`codec_from_spec`, one-line :class:`CodecSpecError`)::

        fp16 | bf16                  two bytes a value
        int8[:CHUNK]                 per-chunk float32 scale, stochastic rounding (CHUNK default 1024)
        topk:FRACTION                largest-magnitude coordinates, error feedback
        randk:FRACTION               random coordinates from a seed that travels, error feedback
        lowrank:RANK                 PowerSGD on matrix-shaped parameters (needs the Layout), warm start,
                                     error feedback; 1-D parameters travel uncompressed
        seeds:K                      K shared-randomness projections: a seed and K scalars travel

    ``codec.encode(vector, state, rng) -> Encoded`` compresses a 1-D float32 vector, updating the node's
    :class:`CodecState` (residual, warm start; checkpointable with ``to_fields``); all randomness comes
    from the ``torch.Generator`` passed in. ``codec.decode(encoded, dim, limits) -> vector`` rebuilds it.

Bounded decoding
    An :class:`Encoded` that came from a peer is hostile. Decoding checks the codec name and dimension,
    every count against the receiver's own codec and :class:`DecodeLimits`, byte lengths against counts
    before allocating, indices (in range, unique, sorted) and finiteness; it never allocates more than a few
    model-sized vectors. Every violation raises :class:`CodecError` with a stable ``reason``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .base import (
    DEFAULT_LIMITS,
    Codec,
    CodecError,
    CodecSpecError,
    CodecState,
    DecodeLimits,
    Encoded,
    Layout,
)
from .lowrank import LowRankCodec
from .quantize import HalfCodec, Int8Codec
from .seeds import SeedsCodec
from .sparse import RandKCodec, TopKCodec, k_for

__all__ = [
    "CODECS",
    "DEFAULT_LIMITS",
    "Codec",
    "CodecError",
    "CodecSpecError",
    "CodecState",
    "DecodeLimits",
    "Encoded",
    "HalfCodec",
    "Int8Codec",
    "Layout",
    "LowRankCodec",
    "RandKCodec",
    "SeedsCodec",
    "TopKCodec",
    "codec_from_spec",
    "k_for",
    "new_state",
]


def _no_param(name: str, param: str | None) -> str:
    if param is not None:
        raise CodecSpecError(f"codec {name!r} takes no parameter, got {name}:{param}")
    return name


def _integer(name: str, param: str | None, *, lo: int, hi: int, default: int | None = None) -> int:
    if param is None:
        if default is None:
            raise CodecSpecError(
                f"codec {name!r} needs a parameter: {name}:N with N an integer in [{lo}, {hi}]"
            )
        return default
    try:
        value = int(param)
    except ValueError:
        raise CodecSpecError(f"{name}:{param}: {param!r} is not an integer") from None
    if not lo <= value <= hi:
        raise CodecSpecError(f"{name}:{param}: the parameter must be in [{lo}, {hi}]")
    return value


def _fraction(name: str, param: str | None) -> float:
    if param is None:
        raise CodecSpecError(f"codec {name!r} needs a fraction: {name}:F with 0 < F <= 1, e.g. {name}:0.01")
    try:
        value = float(param)
    except ValueError:
        raise CodecSpecError(f"{name}:{param}: {param!r} is not a number") from None
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise CodecSpecError(f"{name}:{param}: the fraction must be in (0, 1]")
    return value


def _lowrank(param: str | None, layout: Layout | None, limits: DecodeLimits) -> Codec:
    rank = _integer("lowrank", param, lo=1, hi=limits.max_rank)
    if layout is None:
        raise CodecSpecError("lowrank:RANK needs the model's parameter shapes (a Layout)")
    return LowRankCodec(rank, layout)


#: name -> builder(param, layout, limits); the explicit registry :func:`codec_from_spec` dispatches on.
CODECS: dict[str, Callable[[str | None, Layout | None, DecodeLimits], Codec]] = {
    "fp16": lambda p, _l, _lim: HalfCodec(_no_param("fp16", p)),
    "bf16": lambda p, _l, _lim: HalfCodec(_no_param("bf16", p)),
    "int8": lambda p, _l, lim: Int8Codec(_integer("int8", p, lo=lim.min_chunk, hi=1 << 24, default=1024)),
    "topk": lambda p, _l, _lim: TopKCodec(_fraction("topk", p)),
    "randk": lambda p, _l, _lim: RandKCodec(_fraction("randk", p)),
    "lowrank": _lowrank,
    "seeds": lambda p, _l, lim: SeedsCodec(_integer("seeds", p, lo=1, hi=lim.max_seeds)),
}


def codec_from_spec(
    spec: str, *, layout: Layout | None = None, limits: DecodeLimits = DEFAULT_LIMITS
) -> Codec:
    """The codec a ``NAME[:PARAMS]`` spec names; :class:`CodecSpecError` (one line) when it names none."""
    if not isinstance(spec, str) or not spec.strip():
        raise CodecSpecError(f"empty codec spec; one of: {', '.join(CODECS)}")
    name, sep, param = spec.strip().partition(":")
    builder = CODECS.get(name.lower())
    if builder is None:
        raise CodecSpecError(f"unknown codec {name!r}; one of: {', '.join(CODECS)}")
    return builder(param if sep else None, layout, limits)


def new_state() -> CodecState:
    """A node's empty codec state (no residual, no warm start yet)."""
    return CodecState()
