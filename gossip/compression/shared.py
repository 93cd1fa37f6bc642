"""Shared randomness: what a sender and a receiver both derive from a seed that travels in the message.

Both sides must compute bit-identical draws on different machines and library versions, so nothing here
uses ``torch.Generator`` or numpy's distribution methods (their algorithms may change between releases).
Only the raw 64-bit stream of numpy's Philox4x64 counter-based bit generator is used, keyed by the seed;
numpy keeps bit generators' raw streams stable, and ``tests/gossip/test_codecs.py`` pins the first words
so that a change would fail the suite rather than silently desynchronise peers.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

_LOW32 = np.uint64(0xFFFFFFFF)


def stream(seed: int) -> np.random.Philox:
    """The raw bit stream keyed by ``seed`` (an integer in [0, 2^64))."""
    return np.random.Philox(key=int(seed))


def random_indices(seed: int, dim: int, k: int) -> np.ndarray:
    """``k`` distinct indices of ``range(dim)``, sorted, uniformly at random from ``seed`` (O(dim) work).

    Each index gets a 64-bit key whose high 32 bits are random and low 32 bits are the index itself, so keys
    never tie and the k smallest keys are one well-defined set whatever selection algorithm finds them.
    """
    if not 0 < k <= dim < 2**32:
        raise ValueError(f"need 0 < k <= dim < 2^32, got k={k}, dim={dim}")
    if k == dim:
        return np.arange(dim, dtype=np.int64)
    keys = stream(seed).random_raw(dim)
    keys &= ~_LOW32
    keys |= np.arange(dim, dtype=np.uint64)
    chosen = np.argpartition(keys, k - 1)[:k]
    chosen.sort()
    return chosen.astype(np.int64, copy=False)


def sign_blocks(seed: int, dim: int, count: int, block: int) -> Iterator[np.ndarray]:
    """``count`` random sign directions of length ``dim`` as 0/1 uint8 rows, ``block`` rows at a time.

    Row k is bit b of the stream words ``[k W, (k + 1) W)`` with ``W = ceil(dim / 64)``, bit 1 standing for
    +1 and bit 0 for -1 (Rademacher entries). Memory stays at ``block * dim`` bytes whatever ``count`` is.
    """
    words = -(-dim // 64)
    bits = stream(seed)
    for start in range(0, count, block):
        rows = min(block, count - start)
        raw = bits.random_raw(rows * words).astype("<u8", copy=False).view(np.uint8).reshape(rows, words * 8)
        yield np.unpackbits(raw, axis=1, count=dim, bitorder="little")
