"""Pre-aggregators: maps from (n, d) rows to (n', d) rows that any rule can then aggregate.

``aggregate("krum", x, f=2, pre=["nnm"])`` runs NNM on x, then Krum on the result. A
pre-aggregator never modifies its input; when it would change nothing (clipping with no row
above the radius) it returns the input tensor itself.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .gram import geometry
from .validation import AggregationError, check_f, check_updates, ensure_finite

__all__ = ["arc", "bucketing", "nnm", "static_clipping"]


def _row_norms(name: str, updates: Tensor) -> Tensor:
    """Euclidean norm of every row, float64 on the CPU; raises on non-finite entries."""
    norms = torch.linalg.vector_norm(updates, dim=1)
    if ensure_finite(name, updates, norms):
        norms = torch.linalg.vector_norm(updates.to(torch.float64), dim=1)
    return norms.to(device="cpu", dtype=torch.float64)


def _scale_rows(updates: Tensor, scale: Tensor) -> Tensor:
    if bool((scale == 1.0).all()):
        return updates
    return updates * scale.to(device=updates.device, dtype=updates.dtype)[:, None]


def nnm(updates: Tensor, *, f: int) -> Tensor:
    """Nearest-neighbour mixing, NNM (Allouah, Farhadkhani, Guerraoui, Gupta, Pinot & Stephan,
    2023, "Fixing by mixing: a recipe for optimal Byzantine ML under heterogeneity", AISTATS).

    Row i becomes the mean of its n - f nearest rows (itself included):
    ``y_i = 1/(n - f) sum_{j in N_i} x_j``. Output shape (n, d).

    Args:
        updates: (n, d) tensor.
        f: number of Byzantine rows tolerated; requires 2f < n.
    Cost: one Gram product (2 n^2 d flops), O(n^2 log n) neighbour search, and one
    (n, n) x (n, d) product for the mixing (another 2 n^2 d flops).
    """
    n, _ = check_updates("nnm", updates)
    check_f("nnm", n, f)
    dist = geometry("nnm", updates).dist
    k = n - f
    nearest = torch.sort(dist, dim=1, stable=True).indices[:, :k]
    mixing = torch.zeros(n, n, dtype=torch.float64)
    mixing.scatter_(1, nearest, 1.0 / k)
    return mixing.to(device=updates.device, dtype=updates.dtype) @ updates


def bucketing(updates: Tensor, *, s: int, seed: int = 0) -> Tensor:
    """Bucketing (Karimireddy, He & Jaggi, 2022, "Byzantine-robust learning on heterogeneous
    datasets via bucketing", ICLR).

    Rows are shuffled by a permutation drawn from ``seed`` and split into ceil(n / s) buckets
    of s consecutive rows (the last may be smaller); each bucket is replaced by its mean.
    Output shape (ceil(n / s), d). At most f buckets contain a Byzantine row, so the rule
    applied next still faces at most f Byzantine inputs, now among ceil(n / s).

    Args:
        updates: (n, d) tensor.
        s: bucket size >= 1.
        seed: seed of the permutation (so that every simulated node can be replayed).
    Cost: one (n', n) x (n, d) product.
    """
    n, _ = check_updates("bucketing", updates)
    if isinstance(s, bool) or not isinstance(s, int) or s < 1:
        raise AggregationError(f"bucketing: bucket size s must be an integer >= 1, got {s!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise AggregationError(f"bucketing: seed must be an integer, got {seed!r}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    buckets = math.ceil(n / s)
    mixing = torch.zeros(buckets, n, dtype=torch.float64)
    for b in range(buckets):
        members = perm[b * s : (b + 1) * s]
        mixing[b, members] = 1.0 / len(members)
    out = mixing.to(device=updates.device, dtype=updates.dtype) @ updates
    ensure_finite("bucketing", updates, out.sum())
    return out


def static_clipping(updates: Tensor, *, tau: float) -> Tensor:
    """Static norm clipping: ``y_i = x_i min(1, tau / ||x_i||)``.

    Used before robust rules since Blanchard et al. (2017); analysed e.g. by Allouah et al.
    (2024, "The vital role of gradient clipping in Byzantine-resilient distributed learning").

    Args:
        updates: (n, d) tensor.
        tau: clipping radius > 0. Bounds every row's norm, Byzantine ones included.
    Cost: one pass for the norms, one for the scaling (skipped when nothing is clipped).
    """
    check_updates("clipping", updates)
    if isinstance(tau, bool) or not isinstance(tau, int | float) or not tau > 0:
        raise AggregationError(f"clipping: tau must be a number > 0, got {tau!r}")
    norms = _row_norms("clipping", updates)
    scale = torch.where(norms > tau, tau / norms, torch.ones_like(norms))
    return _scale_rows(updates, scale)


def arc(updates: Tensor, *, f: int) -> Tensor:
    """Adaptive robust clipping, ARC (Allouah, Guerraoui, Gupta, Jellouli, Rizk & Stephan,
    2025, "Adaptive gradient clipping for robust federated learning", ICLR).

    With ``k = floor(2 (f / n) (n - f))``, the k rows of largest norm are clipped to the norm of
    the (k+1)-th largest: ``y_i = x_i min(1, ||x_(k+1)|| / ||x_i||)``.

    Args:
        updates: (n, d) tensor.
        f: number of Byzantine rows tolerated; requires 2f < n (then k < n - f).
    Cost: one pass for the norms, one for the scaling (skipped when k = 0).
    """
    n, _ = check_updates("arc", updates)
    check_f("arc", n, f)
    norms = _row_norms("arc", updates)
    k = (2 * f * (n - f)) // n
    if k == 0:
        return updates
    radius = float(torch.sort(norms, descending=True).values[k])
    scale = torch.where(norms > radius, radius / norms, torch.ones_like(norms))
    return _scale_rows(updates, scale)
