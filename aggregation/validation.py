"""Input checks shared by every rule: one error type, tolerance table, finite filtering.

Every failure is an :class:`AggregationError` (a ``ValueError``) whose message names the rule,
what it got and what it needs, e.g. ``"krum: needs n > 2f + 2, got n=6, f=2"``.

The table :data:`REQUIREMENTS` says, for every rule and pre-aggregator, how many Byzantine
inputs ``f`` it tolerates among ``n``; :func:`requirement` and :func:`max_f` read it, so a
simulator can reject a configuration before training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "REQUIREMENTS",
    "AggregationError",
    "Requirement",
    "check_f",
    "check_own",
    "check_updates",
    "check_weights",
    "ensure_finite",
    "finite_rows",
    "max_f",
    "requirement",
]


class AggregationError(ValueError):
    """A rule was called with inputs it cannot aggregate (shape, size, f, non-finite values)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Requirement:
    """How many Byzantine inputs a rule tolerates: ``holds(n, f)``, described by ``text``."""

    holds: Callable[[int, int], bool]
    text: str


def _honest_majority(n: int, f: int) -> bool:
    return n > 2 * f


def _no_byzantine(n: int, f: int) -> bool:
    return f == 0


def _any_f(n: int, f: int) -> bool:
    return f <= n


def _honest_majority_with_own(n: int, f: int) -> bool:
    return n + 1 > 2 * f


_MAJORITY = Requirement(holds=_honest_majority, text="n > 2f")

#: For every rule and pre-aggregator: the condition on (n, f) that its guarantee needs.
#: For rules relative to the node's own vector, n counts the neighbour rows only.
REQUIREMENTS: dict[str, Requirement] = {
    "mean": Requirement(holds=_no_byzantine, text="f = 0 (the mean tolerates no Byzantine input)"),
    "median": _MAJORITY,
    "trimmed-mean": _MAJORITY,
    "meamed": _MAJORITY,
    "krum": Requirement(holds=lambda n, f: n > 2 * f + 2, text="n > 2f + 2"),
    "multi-krum": Requirement(holds=lambda n, f: n > 2 * f + 2, text="n > 2f + 2"),
    "bulyan": Requirement(holds=lambda n, f: n >= 4 * f + 3, text="n >= 4f + 3"),
    "mda": _MAJORITY,
    "caf": _MAJORITY,
    "smea": _MAJORITY,
    "geometric-median": _MAJORITY,
    "centered-clipping": _MAJORITY,
    "monna": Requirement(holds=_honest_majority_with_own, text="n + 1 > 2f (own vector included)"),
    "clipped-gossip": Requirement(holds=_any_f, text="f <= n"),
    "adaptive-clipped-gossip": Requirement(holds=lambda n, f: n > f, text="n > f"),
    "cs-plus": _MAJORITY,
    "gts": Requirement(holds=lambda n, f: n > f, text="n > f"),
    "rfa-gossip": Requirement(holds=_honest_majority_with_own, text="n + 1 > 2f (own vector included)"),
    "nnm": _MAJORITY,
    "arc": _MAJORITY,
    "bucketing": Requirement(holds=_any_f, text="f <= n"),
    "clipping": Requirement(holds=_any_f, text="f <= n"),
}


def requirement(name: str, n: int, f: int) -> None:
    """Raise unless rule ``name`` tolerates ``f`` Byzantine inputs among ``n``.

    Raises:
        AggregationError: naming the rule, n, f and the condition, e.g.
            ``"bulyan: needs n >= 4f + 3, got n=10, f=2"``; or if ``name`` is unknown.
    """
    if name not in REQUIREMENTS:
        raise AggregationError(f"unknown rule {name!r}; known: {', '.join(sorted(REQUIREMENTS))}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise AggregationError(f"{name}: needs n >= 1 inputs, got n={n!r}")
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise AggregationError(f"{name}: f must be an integer >= 0, got f={f!r}")
    req = REQUIREMENTS[name]
    if not req.holds(n, f):
        raise AggregationError(f"{name}: needs {req.text}, got n={n}, f={f}")


def max_f(name: str, n: int) -> int:
    """Largest f that rule ``name`` tolerates among ``n`` inputs; -1 if not even f = 0.

    Cost: O(n) evaluations of the rule's condition.
    """
    if name not in REQUIREMENTS or isinstance(n, bool) or not isinstance(n, int) or n < 1:
        requirement(name, n, 0)  # raises the matching error
    holds = REQUIREMENTS[name].holds
    return max((f for f in range(n + 1) if holds(n, f)), default=-1)


def check_f(name: str, n: int, f: int) -> None:
    """:func:`requirement` for a rule that received ``n`` rows and parameter ``f``."""
    requirement(name, n, f)


def check_updates(name: str, updates: Tensor) -> tuple[int, int]:
    """Check that ``updates`` is a non-empty floating (n, d) tensor; return (n, d).

    Finiteness is checked separately by :func:`ensure_finite`, from a cheap witness.
    """
    if not isinstance(updates, Tensor):
        raise AggregationError(f"{name}: updates must be a torch.Tensor, got {type(updates).__name__}")
    if updates.dim() != 2:
        raise AggregationError(f"{name}: updates must have shape (n, d), got {tuple(updates.shape)}")
    n, d = updates.shape
    if n == 0 or d == 0:
        raise AggregationError(f"{name}: updates must be non-empty, got shape ({n}, {d})")
    if not updates.is_floating_point():
        raise AggregationError(f"{name}: updates must be floating point, got {updates.dtype}")
    return int(n), int(d)


def check_own(name: str, own: Tensor, updates: Tensor, *, label: str = "own") -> None:
    """Check that a vector (the node's own, a starting point) is finite, (d,), like the rows."""
    d = updates.shape[1]
    if not isinstance(own, Tensor) or own.shape != (d,):
        shape = tuple(own.shape) if isinstance(own, Tensor) else type(own).__name__
        raise AggregationError(f"{name}: {label} must have shape ({d},), got {shape}")
    if own.device != updates.device or own.dtype != updates.dtype:
        raise AggregationError(
            f"{name}: {label} must match updates' dtype and device ({updates.dtype}, {updates.device}), "
            f"got ({own.dtype}, {own.device})"
        )
    if not bool(torch.isfinite(own).all()):
        raise AggregationError(f"{name}: {label} vector is not finite")


def check_weights(name: str, weights: Tensor, n: int, *, mixing: bool) -> Tensor:
    """Check per-row weights: shape (n,), finite, >= 0; return them as float64 on the CPU.

    With ``mixing`` the weights are a node's mixing weights for its n neighbours, whose own
    weight is ``1 - sum``, so the sum must be at most 1; otherwise the sum must be positive.
    """
    if not isinstance(weights, Tensor):
        weights = torch.as_tensor(weights)
    if weights.shape != (n,):
        raise AggregationError(f"{name}: weights must have shape ({n},), got {tuple(weights.shape)}")
    w = weights.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise AggregationError(f"{name}: weights must be finite and >= 0")
    total = float(w.sum())
    if mixing and total > 1.0 + 1e-6:
        raise AggregationError(f"{name}: mixing weights of the neighbours must sum to <= 1, got {total:.6g}")
    if not mixing and total <= 0.0:
        raise AggregationError(f"{name}: weights must have a positive sum")
    return w


def finite_rows(updates: Tensor) -> Tensor:
    """Boolean mask (n,) of the rows of ``updates`` whose entries are all finite.

    Callers filter with it before aggregating (``x[finite_rows(x)]``): no rule accepts a
    non-finite row. A row's min and max are finite iff all its entries are (NaN propagates).
    Cost: one pass over the data, no (n, d) temporary.
    """
    if updates.dim() != 2:
        raise AggregationError(f"finite_rows: updates must have shape (n, d), got {tuple(updates.shape)}")
    if updates.shape[0] == 0 or updates.shape[1] == 0:
        return torch.ones(updates.shape[0], dtype=torch.bool, device=updates.device)
    low, high = torch.aminmax(updates, dim=1)
    return torch.isfinite(low) & torch.isfinite(high)


def ensure_finite(name: str, updates: Tensor, witness: Tensor) -> bool:
    """Raise if ``updates`` has a non-finite entry; return whether ``witness`` overflowed.

    ``witness`` is any quantity the rule computed anyway that is non-finite whenever an input
    entry is (a Gram diagonal, sorted extremes, row norms): when it is finite the check costs
    nothing. Otherwise the rows are checked exactly; if they are all finite the witness merely
    overflowed (huge but finite inputs) and True is returned so the rule can take a safe path.
    """
    if bool(torch.isfinite(witness).all()):
        return False
    bad = (~finite_rows(updates)).nonzero().flatten().tolist()
    if bad:
        shown = ", ".join(str(i) for i in bad[:8]) + (", ..." if len(bad) > 8 else "")
        raise AggregationError(
            f"{name}: rows [{shown}] are not finite; drop them with finite_rows() before aggregating"
        )
    return True
