"""Rules over a list of separate rows, fused into one native pass: no stack, every row read once.

A gossip node combines its own vector with a handful of received ones, every round, and in the simulator
a thousand nodes do. Stacking the rows first (one copy of all of them) and then running torch passes
over the stack costs several times the reads the arithmetic needs. The C kernels of ``_native.c``
(built at install time; optional) read every row once, a cache-sized block of columns at a time, with
the GIL released:

- :func:`trimmed_mean_of` is the coordinate-wise trimmed mean, exact like the rule in
  :mod:`.coordinatewise` (the middle values are summed; no extreme is ever subtracted);
- :func:`weighted_sum_of` is ``sum_i w_i x_i`` (D-PSGD's mixing step);
- :func:`accumulate_deviation` adds ``x - ref`` into a running total and returns ``||x - ref||²``
  (the simulator's consensus distance, one pass instead of three);
- :func:`rule_of_rows` answers ``aggregate(rule, stack(rows), **params)`` for the rules a kernel
  computes (mean, median, trimmed mean), without the stack.

Both return ``None`` when they cannot answer: the kernels are not built (no C compiler at install
time) or are switched off (``PHALANX_NATIVE=0``), the rows are not contiguous float32 CPU vectors of
one length, ``f`` is beyond the kernel's limit, or **a row holds a NaN or an infinity** (found in the
same pass). The caller then takes its checked torch path, which names or drops the bad rows. Results
agree with the torch rules to float32 rounding (the summation order differs); a given input always
gives the same bits.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

_native: ModuleType | None
try:
    _native = importlib.import_module("._native", __package__)
except ImportError:  # built without a C compiler: the torch paths run instead
    _native = None

__all__ = [
    "ENABLED",
    "MAX_F",
    "ROW_RULES",
    "accumulate_deviation",
    "available",
    "rule_of_rows",
    "trimmed_mean_of",
    "weighted_sum_of",
]

#: Whether the kernels are used (set ``PHALANX_NATIVE=0`` to compare against the torch paths).
ENABLED = _native is not None and os.environ.get("PHALANX_NATIVE", "1") != "0"
#: Largest f the trimmed-mean kernel takes (it keeps 2f values per column in L1).
MAX_F = 8 if _native is None else int(_native.MAX_F)
_MAX_ROWS = 4096
_FLOAT32 = torch.float32
#: Above this many rows a torch chain of ``add_`` (one row streamed at a time) is as fast or faster:
#: the kernel reads all rows side by side, and tens of concurrent streams from memory thrash (measured
#: n=32, d=1e6: 12 ms vs 6 ms; at d=50,890, in cache, the kernel wins up to n=33: 0.17 vs 0.21 ms).
WEIGHTED_SUM_MAX_ROWS = 24


def available() -> bool:
    """Whether the native kernels are built and enabled."""
    return ENABLED


def _addresses(rows: Sequence[Tensor]) -> tuple[list[int], int] | None:
    """The data addresses of ``rows`` and their length, if every row is a contiguous float32 CPU
    vector of one length; else None."""
    if not ENABLED or not 0 < len(rows) <= _MAX_ROWS:
        return None
    d = rows[0].numel()
    addresses = []
    for row in rows:
        if row.dtype is not _FLOAT32 or not row.is_cpu or row.numel() != d or not row.is_contiguous():
            return None
        addresses.append(row.data_ptr())
    return addresses, d


def trimmed_mean_of(rows: Sequence[Tensor], f: int) -> Tensor | None:
    """Coordinate-wise trimmed mean of ``rows`` (the f largest and f smallest values of every
    coordinate dropped, the rest averaged), or None (see the module docstring).

    Requires ``1 <= f <= MAX_F`` and ``len(rows) >= 2f + 1`` (else None).
    Cost: one read of every row, 4f min/max per value.
    """
    found = _addresses(rows)
    if found is None or not 1 <= f <= MAX_F or len(rows) < 2 * f + 1:
        return None
    addresses, d = found
    out = torch.empty(d, dtype=torch.float32)
    assert _native is not None
    return out if _native.trimmed_mean(addresses, d, f, out.data_ptr()) else None


def weighted_sum_of(rows: Sequence[Tensor], weights: Sequence[float]) -> Tensor | None:
    """``sum_i weights[i] * rows[i]`` (weights as given, not normalised), or None (see the module
    docstring; also None for more than :data:`WEIGHTED_SUM_MAX_ROWS` rows). Cost: one read of every row."""
    found = _addresses(rows)
    if found is None or len(weights) != len(rows) or len(rows) > WEIGHTED_SUM_MAX_ROWS:
        return None
    addresses, d = found
    out = torch.empty(d, dtype=torch.float32)
    assert _native is not None
    return out if _native.weighted_sum(addresses, [float(w) for w in weights], d, out.data_ptr()) else None


#: The rules :func:`rule_of_rows` may answer.
ROW_RULES = frozenset({"mean", "median", "trimmed-mean"})


def rule_of_rows(rule: str, rows: Sequence[Tensor], params: Mapping[str, Any]) -> Tensor | None:
    """``aggregate(rule, torch.stack(rows), **params)`` without the stack, for ``mean``,
    ``trimmed-mean`` and ``median`` (the trimmed mean that keeps one or two middle values,
    within the kernel's f); None for any other rule or parameter, or when the kernels cannot
    answer (see the module docstring)."""
    n = len(rows)
    if rule == "mean" and not params:
        return weighted_sum_of(rows, [1.0 / n] * n)
    if rule == "trimmed-mean" and params.keys() == {"f"}:
        f = params["f"]
        if not isinstance(f, int) or isinstance(f, bool):
            return None
        return weighted_sum_of(rows, [1.0 / n] * n) if f == 0 else trimmed_mean_of(rows, f)
    if rule == "median" and not params and n >= 3:
        out = trimmed_mean_of(rows, (n - 1) // 2)
        # (a + b) / 2 of two huge middle values can overflow; the sorted path halves first.
        return out if out is not None and bool(torch.isfinite(out.sum())) else None
    return None


def accumulate_deviation(x: Tensor, ref: Tensor, total: Tensor) -> float | None:
    """``total += x - ref`` in place and ``||x - ref||²`` (summed in float32 lanes, then float64), or
    None when the kernels cannot take them (then nothing is written). Non-finite or overflowing input
    gives a non-finite result, as the torch expression would."""
    found = _addresses((x, ref, total))
    if found is None:
        return None
    (xa, ra, ta), d = found
    assert _native is not None
    return float(_native.deviation(xa, ra, ta, d))
