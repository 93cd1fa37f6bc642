"""Hostile msgpack bodies, shared by the adversarial tests and ``scripts/red_team.py``."""

from __future__ import annotations

import msgpack


def _envelope(type_name: str, n_fields: int) -> bytes:
    """The start of a message map of ``n_fields`` + 2 entries with a valid version and type."""
    return (
        bytes([0x80 | (n_fields + 2)])
        + msgpack.packb("v")
        + b"\x01"
        + msgpack.packb("t")
        + msgpack.packb(type_name)
    )


def empty_lists(total: int = 6_000_000, width: int = 100_000) -> bytes:
    """A D-PSGD ``model`` message whose one extra field holds ``total`` empty lists in arrays of ``width``:
    6 MB, under a default frame limit, and about 6 million list objects once decoded."""
    width = min(width, total)
    inner = b"\xdd" + width.to_bytes(4, "big") + b"\x90" * width
    outer = total // width
    return _envelope("model", 1) + msgpack.packb("x") + b"\xdc" + outer.to_bytes(2, "big") + inner * outer


def nested_pairs(total: int = 2_000_000, width: int = 100_000) -> bytes:
    """Arrays of ``[[]]``: two objects in two bytes, so no run of one-byte objects to skip."""
    width = min(width, total // 2)
    inner = b"\xdd" + width.to_bytes(4, "big") + b"\x91\x90" * width
    outer = total // (2 * width)
    return _envelope("model", 1) + msgpack.packb("x") + b"\xdc" + outer.to_bytes(2, "big") + inner * outer


def short_strings(total: int = 1_000_000, width: int = 100_000) -> bytes:
    """Arrays of one-character strings: two bytes an object, none of them one byte long."""
    width = min(width, total)
    inner = b"\xdd" + width.to_bytes(4, "big") + b"\xa1a" * width
    outer = max(1, total // width)
    return _envelope("model", 1) + msgpack.packb("x") + b"\xdc" + outer.to_bytes(2, "big") + inner * outer


def deep(depth: int = 100_000) -> bytes:
    """``[[[[...]]]]`` nested ``depth`` times."""
    return _envelope("model", 1) + msgpack.packb("x") + b"\x91" * depth + b"\x90"


def wide_claim() -> bytes:
    """An array header announcing 2^32 - 1 entries followed by almost nothing."""
    return _envelope("model", 1) + msgpack.packb("x") + b"\xdd\xff\xff\xff\xff" + b"\x90" * 16


def sized(name: str, max_bytes: int) -> bytes:
    """The bomb ``name`` at the largest size that fits in ``max_bytes`` (its shape unchanged)."""
    if name == "empty-lists":
        return empty_lists(total=min(6_000_000, max_bytes - 64), width=min(100_000, (max_bytes - 64) // 2))
    if name == "nested-pairs":
        return nested_pairs(total=min(2_000_000, max_bytes - 64), width=min(100_000, (max_bytes - 64) // 4))
    if name == "short-strings":
        return short_strings(
            total=min(1_000_000, (max_bytes - 64) // 2), width=min(100_000, (max_bytes - 64) // 4)
        )
    if name == "deep":
        return deep(min(100_000, max_bytes - 64))
    return wide_claim()


BOMBS = ("empty-lists", "nested-pairs", "short-strings", "deep", "wide-claim")
