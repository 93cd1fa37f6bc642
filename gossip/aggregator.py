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

Rows that are not finite are dropped first and counted in ``dropped_nonfinite`` (the wire layer already
rejects them on a real node; this is the one place both worlds drop them). A rule that cannot run on the
rows at hand (too few rows for its ``f``, say, after crashes) leaves the node's own vector unchanged and
counts it in ``failures``.

:meth:`Combiner.of_rows` is the same policy for a protocol that combines received models without a model
of its own (a MoDeST aggregator): non-finite rows dropped and counted; a rule that cannot run on what is
left falls back to the coordinate-wise median of those rows (a rule that never fails on one or more rows)
and counts the failure. Every protocol applies its rule through this class, so the policy and the
counters are the same everywhere.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch

import phalanx.aggregation as agg
from phalanx.gossip.events import PeerId

Tensor = torch.Tensor

# ``mean`` with mixing weights is D-PSGD's own step, computed here; every other rule comes from aggregation/.
_MIXING = "mean"


def _weighted_mean(own: Tensor, rows: Tensor, weights: Tensor) -> Tensor:
    self_weight = 1.0 - float(weights.sum())
    return own * self_weight + weights @ rows


def _finite_mask(rows: Tensor) -> Tensor:
    """Which rows are all finite. A row whose sum is finite has no NaN or infinite entry, so one
    contiguous sum per row settles the common case; only a non-finite sum (a bad entry, or a finite
    row so large that its sum overflows) pays for the exact check."""
    if bool(torch.isfinite(rows.sum(dim=1)).all()):
        return torch.ones(rows.shape[0], dtype=torch.bool, device=rows.device)
    return agg.finite_rows(rows)


def is_finite(vector: Tensor) -> bool:
    """Whether one model vector is all finite (the check of :func:`_finite_mask`, for a single row)."""
    return bool(_finite_mask(vector.unsqueeze(0))[0])


def gossip_rule_names() -> frozenset[str]:
    """Rules that take (own, neighbours, weights): the aggregation package's gossip rules and ``mean``."""
    return frozenset({_MIXING, *agg.GOSSIP_RULES})


def rule_names() -> tuple[str, ...]:
    return tuple(sorted({_MIXING, *agg.RULES, *agg.GOSSIP_RULES}))


# Settings a caller may hold for every rule (a sweep over rules shares one f); dropped where a rule takes none.
GENERIC_PARAMS = frozenset({"f", "tau"})


def accepted_params(rule: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` without the generic ones (f, tau) that ``rule`` does not take; any other unknown
    parameter is kept, so the rule itself rejects it with a message naming it."""
    if rule not in agg.RULE_PARAMS:
        return dict(params)
    takes = set(agg.RULE_PARAMS[rule]) | {"pre"}
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
        known = rule_names()
        if rule not in known:
            raise ValueError(f"unknown aggregation rule {rule!r}; choose one of: {', '.join(known)}")
        self._gossip = rule in gossip_rule_names()
        self._takes_weights = "weights" in agg.RULE_PARAMS.get(rule, frozenset({"weights"}))
        self._fn: Callable[..., Tensor] | None = None
        if rule != _MIXING:
            self._fn = functools.partial(agg.aggregate, rule)
        # Whether aggregation.fused may answer this rule without stacking the rows.
        self._row_rule = rule in agg.fused.ROW_RULES

    def __call__(
        self, own: Tensor, received: Mapping[PeerId, Tensor], weights: Mapping[PeerId, float]
    ) -> Tensor:
        """The node's next vector; never modifies ``own`` or the received tensors."""
        if not received:
            return own
        peers = sorted(received)
        ordinary = self._fn is not None and not self._gossip
        with_own = ordinary and self.include_own
        # Fast path: the native kernels of aggregation.fused read every row once, without a stack; they
        # answer None for a non-finite row (or a rule/setting they do not cover), which the checked
        # path below then handles.
        if self._fn is None:
            # D-PSGD mixing: own weight 1 - sum of the neighbours' weights (missing ones give theirs back).
            mix = [float(weights.get(p, 0.0)) for p in peers]
            fast = agg.fused.weighted_sum_of([own, *(received[p] for p in peers)], [1.0 - sum(mix), *mix])
            if fast is not None:
                return fast
            out = own * (1.0 - sum(mix))
            for p, wp in zip(peers, mix):
                out.add_(received[p], alpha=wp)
            if bool(torch.isfinite(out.sum())):
                return out
        elif ordinary and self._row_rule:
            rows_in = [own, *(received[p] for p in peers)] if with_own else [received[p] for p in peers]
            fast = agg.fused.rule_of_rows(self.rule, rows_in, self.params)
            if fast is not None:
                return fast
        # Ordinary rules get [own, *received] as rows (stacked once, own in row 0), or only the received
        # rows with include_own=False.
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
            w = torch.tensor([float(weights.get(p, 0.0)) for p in peers], dtype=own.dtype, device=own.device)
            if self._fn is None:
                return _weighted_mean(own, rows, w)
            if self._takes_weights:
                return self._fn(rows, own=own, weights=w, **self.params)
            return self._fn(rows, own=own, **self.params)
        except ValueError:
            self.failures += 1
            return own

    def trial(self, received: int, dim: int = 4) -> None:
        """Run the rule once on zero vectors of ``received`` neighbours (and the node's own row where the rule
        sees one) and raise what the rule raises: a check before training of what :meth:`__call__` would
        only count as a failure, round after round."""
        if self._fn is None:
            return  # the mixing step cannot fail
        if self._gossip:
            weights = (
                {"weights": torch.full((received,), 1.0 / (received + 1))} if self._takes_weights else {}
            )
            self._fn(torch.zeros(received, dim), own=torch.zeros(dim), **weights, **self.params)
        else:
            self._fn(torch.zeros(received + int(self.include_own), dim), **self.params)

    def of_rows(self, received: Mapping[PeerId, Tensor]) -> Tensor | None:
        """The rule over the received rows alone (no own row); ``None`` when no finite row is left."""
        if not received:
            return None
        peers = sorted(received)
        rows = torch.stack([received[p] for p in peers])
        mask = _finite_mask(rows)
        if not bool(mask.all()):
            self.dropped_nonfinite += int((~mask).sum())
            rows = rows[mask]
            if rows.shape[0] == 0:
                return None
        if self._fn is None:
            return rows.mean(dim=0)
        try:
            if self._gossip:
                raise ValueError(f"{self.rule} needs the node's own model")
            return self._fn(rows, **self.params)
        except ValueError:
            self.failures += 1
            return rows.median(dim=0).values
