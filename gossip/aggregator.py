"""Bind an aggregation rule name and its parameters into the ``combine`` step of a gossip protocol.

A gossip protocol ends each exchange with its own vector and the vectors its neighbours sent:
``combine(own, received, weights) -> new``. :class:`Combiner` turns any rule of :mod:`phalanx.aggregation`
into that call:

- ``mean`` with mixing weights is the D-PSGD mixing step ``w_ii x_i + sum_j w_ij x_j``. A neighbour whose
  vector did not arrive gives its weight back to the node itself, so the weights still sum to one;
- a *gossip rule* (one that needs the node's own vector and the mixing weights, such as self-centred
  clipping) gets the neighbours' rows, ``own=`` and ``weights=`` (of the neighbours that answered);
- any other rule is a robust statistic of the rows ``[own, *received]`` (of ``received`` only with
  ``include_own=False``).

Rows that are not finite are dropped first (the wire layer already rejects them; the simulator, which
skips the wire, relies on this). A rule that cannot run on the rows at hand (too few rows for its ``f``,
say, after crashes) leaves the node's own vector unchanged and counts it in ``failures``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from phalanx.gossip.events import PeerId

Tensor = torch.Tensor

# Rules of aggregation/ called as rule(neighbours, own=..., weights=..., **params) (aggregation/gossip_rules.py)
# when the package does not list them itself.
_KNOWN_GOSSIP_RULES = ("clipped-gossip", "adaptive-clipped-gossip", "cs-plus", "gts")
_LOCAL_GOSSIP_RULES = ("mean",)


def _weighted_mean(own: Tensor, rows: Tensor, weights: Tensor) -> Tensor:
    self_weight = 1.0 - float(weights.sum())
    return own * self_weight + weights @ rows


def _aggregation() -> Any:
    """The aggregation package's API, or None while it is not there yet (then only ``mean`` works)."""
    try:
        import phalanx.aggregation as agg
    except ImportError:  # pragma: no cover
        return None
    return agg if hasattr(agg, "aggregate") else None


def _finite_mask(rows: Tensor) -> Tensor:
    """Which rows are all finite. A row whose sum is finite has no NaN or infinite entry, so one
    contiguous sum per row settles the common case; only a non-finite sum (a bad entry, or a finite
    row so large that its sum overflows) pays for the exact check."""
    if bool(torch.isfinite(rows.sum(dim=1)).all()):
        return torch.ones(rows.shape[0], dtype=torch.bool)
    agg = _aggregation()
    if agg is not None and hasattr(agg, "finite_rows"):
        return agg.finite_rows(rows)
    return torch.isfinite(rows).all(dim=1)


def gossip_rule_names() -> frozenset[str]:
    """Rules that take (own, neighbours, weights): the aggregation package's gossip rules and ``mean``."""
    agg = _aggregation()
    names = set(_LOCAL_GOSSIP_RULES)
    if agg is not None:
        listed = getattr(agg, "GOSSIP_RULES", None)
        if listed is None:
            listed = [r for r in _KNOWN_GOSSIP_RULES if r in getattr(agg, "RULES", {})]
        names |= set(listed)
    return frozenset(names)


def rule_names() -> tuple[str, ...]:
    agg = _aggregation()
    names = set(_LOCAL_GOSSIP_RULES)
    if agg is not None:
        names |= set(getattr(agg, "RULES", {}))
        names |= set(getattr(agg, "GOSSIP_RULES", ()))
    return tuple(sorted(names))


# Settings a caller may hold for every rule (a sweep over rules shares one f); dropped where a rule takes none.
GENERIC_PARAMS = frozenset({"f", "tau"})


def accepted_params(rule: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` without the generic ones (f, tau) that ``rule`` does not take; any other unknown
    parameter is kept, so the rule itself rejects it with a message naming it."""
    agg = _aggregation()
    table = getattr(agg, "RULE_PARAMS", None) if agg is not None else None
    if table is None or rule not in table:
        return dict(params)
    takes = set(table[rule]) | {"pre"}
    return {k: v for k, v in params.items() if k in takes or k not in GENERIC_PARAMS}


class Combiner:
    """``combine(own, received, weights)`` for one rule and its parameters (see the module docstring)."""

    def __init__(
        self, rule: str = "mean", params: Mapping[str, Any] | None = None, *, include_own: bool = True
    ) -> None:
        self.rule = rule
        self.include_own = include_own
        self.params = accepted_params(rule, params or {})
        self.failures = 0
        self.dropped_nonfinite = 0
        agg = _aggregation()
        known = rule_names()
        if rule not in known:
            raise ValueError(f"unknown aggregation rule {rule!r}; choose one of: {', '.join(known)}")
        self._gossip = rule in gossip_rule_names()
        accepted = (
            getattr(agg, "RULE_PARAMS", {}).get(rule, frozenset({"weights"})) if agg is not None else ()
        )
        self._takes_weights = "weights" in accepted
        self._fn: Callable[..., Tensor] | None = None
        if rule != "mean" and agg is not None:
            self._fn = lambda *a, **k: agg.aggregate(rule, *a, **k)

    def __call__(
        self, own: Tensor, received: Mapping[PeerId, Tensor], weights: Mapping[PeerId, float]
    ) -> Tensor:
        """The node's next vector; never modifies ``own`` or the received tensors."""
        if not received:
            return own
        peers = sorted(received)
        if self._fn is None:
            # D-PSGD mixing, accumulated in one output buffer (no stack); a non-finite row makes the
            # result non-finite, and only then are rows filtered.
            out = own * (1.0 - sum(float(weights.get(p, 0.0)) for p in peers))
            for p in peers:
                out.add_(received[p], alpha=float(weights.get(p, 0.0)))
            if bool(torch.isfinite(out.sum())):
                return out
        # Ordinary rules get [own, *received] as rows (stacked once, own in row 0), or only the received
        # rows with include_own=False.
        ordinary = self._fn is not None and not self._gossip
        with_own = ordinary and self.include_own
        stacked = torch.stack(
            [own, *(received[p] for p in peers)] if with_own else [received[p] for p in peers]
        )
        rows = stacked[1:] if with_own else stacked
        mask = _finite_mask(rows)
        if not bool(mask.all()):
            self.dropped_nonfinite += int((~mask).sum())
            peers = [p for p, keep in zip(peers, mask.tolist()) if keep]
            rows = rows[mask]
            stacked = torch.cat([own.unsqueeze(0), rows]) if with_own else rows
            if not peers:
                return own
        try:
            if ordinary:
                assert self._fn is not None
                return self._fn(stacked, **self.params)
            w = torch.tensor([float(weights.get(p, 0.0)) for p in peers], dtype=own.dtype)
            if self._fn is None:
                return _weighted_mean(own, rows, w)
            if self._takes_weights:
                return self._fn(rows, own=own, weights=w, **self.params)
            return self._fn(rows, own=own, **self.params)
        except ValueError:
            self.failures += 1
            return own
