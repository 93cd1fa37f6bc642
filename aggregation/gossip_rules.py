"""Decentralized gossip rules: a node mixes its neighbours' vectors into its own.

Convention for every rule here: ``updates`` holds the n neighbours' vectors (the node's own is
not a row), ``own`` is the node's own vector x_i (trusted), ``weights`` the mixing weights
W_ij of the n neighbours, and the node keeps ``1 - sum_j W_ij`` for itself. Each rule is

    out = x_i + sum_j W_ij s_j (x_j - x_i),        0 <= s_j <= 1,

i.e. plain gossip with the neighbour's pull shrunk (clipped) or cut, and differs only in how
it picks the s_j from the distances r_j = ||x_j - x_i||. f is the number of Byzantine
neighbours tolerated; their worst-case weight is delta = the sum of the f largest W_ij.

Cost of every rule: one pass over the data for the n distances to own, O(n log n) to pick the
s_j, one GEMV.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .gram import combine, sq_dists_to
from .validation import AggregationError, check_f, check_own, check_updates, check_weights

__all__ = ["adaptive_clipped_gossip", "clipped_gossip", "cs_plus", "gts"]

#: Relative slack when comparing cumulative weights with the Byzantine weight.
_WEIGHT_SLACK = 1e-9


def _prepare(name: str, updates: Tensor, own: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Validate; return the mixing weights (float64) and the distances r_j to own."""
    n, _ = check_updates(name, updates)
    check_own(name, own, updates)
    w = check_weights(name, weights, n, mixing=True)
    return w, sq_dists_to(name, updates, own).sqrt()


def _mix(updates: Tensor, own: Tensor, w: Tensor, s: Tensor) -> Tensor:
    """x_i + sum_j w_j s_j (x_j - x_i) = (1 - sum_j w_j s_j) x_i + sum_j w_j s_j x_j."""
    t = w * s
    coeffs = torch.cat((t, (1.0 - t.sum()).reshape(1)))
    return combine(updates, coeffs, extra=(own,))


def _clip_scale(radius: Tensor, tau: float) -> Tensor:
    """s_j = min(1, tau / r_j) (1 for r_j = 0)."""
    return torch.where(radius > tau, tau / radius.clamp(min=1e-300), torch.ones_like(radius))


def _byzantine_weight(w: Tensor, f: int) -> float:
    """Worst-case total weight of f Byzantine neighbours: the sum of the f largest weights."""
    return float(torch.sort(w, descending=True).values[:f].sum())


def _farthest_holding(radius: Tensor, w: Tensor, weight: float) -> int:
    """Number k of farthest neighbours whose cumulative weight first reaches ``weight``."""
    if weight <= 0.0:
        return 0
    order = torch.sort(radius, descending=True, stable=True).indices
    cumulative = torch.cumsum(w[order], dim=0)
    reached = (cumulative >= weight * (1.0 - _WEIGHT_SLACK)).nonzero()
    return int(reached[0]) + 1 if len(reached) else len(order)


def clipped_gossip(updates: Tensor, *, own: Tensor, weights: Tensor, tau: float) -> Tensor:
    """ClippedGossip / self-centered clipping with a fixed radius (He, Karimireddy & Jaggi,
    2022, "Byzantine-robust decentralized learning via ClippedGossip", arXiv:2202.01545).

    ``out = x_i + sum_j W_ij clip(x_j - x_i, tau)``, ``clip(z, tau) = z min(1, tau / ||z||)``.

    Args:
        updates: (n, d) neighbours' vectors.
        own: (d,) the node's own vector.
        weights: (n,) mixing weights of the neighbours, >= 0, sum <= 1.
        tau: clipping radius > 0. Each Byzantine neighbour j moves the node by at most
            W_ij tau, whatever it sends. f is not a parameter.
    Cost: one pass for the n distances to own, one GEMV.
    """
    w, radius = _prepare("clipped-gossip", updates, own, weights)
    if isinstance(tau, bool) or not isinstance(tau, int | float) or not tau > 0:
        raise AggregationError(f"clipped-gossip: tau must be a number > 0, got {tau!r}")
    return _mix(updates, own, w, _clip_scale(radius, float(tau)))


def adaptive_clipped_gossip(updates: Tensor, *, own: Tensor, weights: Tensor, f: int) -> Tensor:
    """ClippedGossip with the adaptive radius of He, Karimireddy & Jaggi (2022).

    Their analysis sets ``tau_i^2 = (1 / delta_i) sum_{j honest} W_ij ||x_j - x_i||^2``, with
    delta_i the Byzantine weight around node i. The honest set is unknown, so the sum runs over
    the neighbours left after dropping the farthest ones holding weight delta (the worst case:
    the Byzantine neighbours are the farthest). Then ``out = x_i + sum_j W_ij clip(x_j - x_i,
    tau_i)``. With f = 0 it is plain gossip.

    Args:
        updates: (n, d) neighbours' vectors.
        own: (d,) the node's own vector.
        weights: (n,) mixing weights of the neighbours, >= 0, sum <= 1.
        f: number of Byzantine neighbours tolerated; delta = sum of the f largest weights;
            requires n > f.
    Cost: one pass for the n distances to own, O(n log n) for the radius, one GEMV.
    """
    n = check_updates("adaptive-clipped-gossip", updates)[0]
    check_f("adaptive-clipped-gossip", n, f)
    w, radius = _prepare("adaptive-clipped-gossip", updates, own, weights)
    delta = _byzantine_weight(w, f)
    if delta <= 0.0:
        return _mix(updates, own, w, torch.ones_like(radius))
    order = torch.sort(radius, descending=True, stable=True).indices
    kept = order[_farthest_holding(radius, w, delta) :]
    tau = float((w[kept] * radius[kept].square()).sum() / delta) ** 0.5
    return _mix(updates, own, w, _clip_scale(radius, tau))


def cs_plus(updates: Tensor, *, own: Tensor, weights: Tensor, f: int) -> Tensor:
    """CS+ (Gaucher, Dieuleveut & Hendrikx, 2025, "Unified breakdown analysis for Byzantine
    robust gossip", ICML): clip the farthest neighbours holding twice the Byzantine weight.

    Sort neighbours by r_j = ||x_j - x_i|| decreasing; the first k, holding weight >= 2 delta,
    are clipped to tau = r of the (k+1)-th (tau = 0 when none is left):
    ``out = x_i + sum_j W_ij clip(x_j - x_i, tau)``.

    Args:
        updates: (n, d) neighbours' vectors.
        own: (d,) the node's own vector.
        weights: (n,) mixing weights of the neighbours, >= 0, sum <= 1.
        f: number of Byzantine neighbours tolerated; delta = sum of the f largest weights;
            requires 2f < n. With uniform weights the 2f farthest neighbours are clipped.
    Cost: one pass for the n distances to own, O(n log n) for the radius, one GEMV.
    """
    n = check_updates("cs-plus", updates)[0]
    check_f("cs-plus", n, f)
    w, radius = _prepare("cs-plus", updates, own, weights)
    k = _farthest_holding(radius, w, 2.0 * _byzantine_weight(w, f))
    ordered = torch.sort(radius, descending=True, stable=True).values
    tau = float(ordered[k]) if k < n else 0.0
    return _mix(updates, own, w, _clip_scale(radius, tau))


def gts(updates: Tensor, *, own: Tensor, weights: Tensor, f: int) -> Tensor:
    """GTS, gossip trimmed sum (Gaucher, Dieuleveut & Hendrikx, 2025, ICML; Wu et al., 2023):
    drop the farthest neighbours holding the Byzantine weight, gossip with the others.

    Sort neighbours by r_j decreasing; the first k, holding weight >= delta, get s_j = 0 (their
    weight returns to the node), the others s_j = 1.

    Args:
        updates: (n, d) neighbours' vectors.
        own: (d,) the node's own vector.
        weights: (n,) mixing weights of the neighbours, >= 0, sum <= 1.
        f: number of Byzantine neighbours tolerated; delta = sum of the f largest weights;
            requires n > f. With uniform weights the f farthest neighbours are dropped.
    Cost: one pass for the n distances to own, O(n log n) to rank them, one GEMV.
    """
    n = check_updates("gts", updates)[0]
    check_f("gts", n, f)
    w, radius = _prepare("gts", updates, own, weights)
    k = _farthest_holding(radius, w, _byzantine_weight(w, f))
    order = torch.sort(radius, descending=True, stable=True).indices
    s = torch.ones(n, dtype=torch.float64)
    s[order[:k]] = 0.0
    return _mix(updates, own, w, s)
