"""Iterative rules solved in the n x n Gram space: geometric median, centered clipping.

Every iterate is an affine combination ``z = sum_i a_i x_i`` of the rows (and of a given
starting vector), so ``||z - x_j||^2 = a^T G a - 2 (G a)_j + G_jj`` (see :mod:`.gram`): each
iteration costs O(n^2) whatever d is, and z is formed once, with one GEMV, at the end.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .gram import affine_sq_dists, central_rows, combine, geometry
from .validation import AggregationError, check_own, check_updates, check_weights

__all__ = ["centered_clipping", "geometric_median", "rfa_gossip"]


def _check_positive(name: str, label: str, value: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise AggregationError(f"{name}: {label} must be a number > 0, got {value!r}")


def _check_count(name: str, label: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AggregationError(f"{name}: {label} must be an integer >= 1, got {value!r}")


def geometric_median(
    updates: Tensor,
    *,
    weights: Tensor | None = None,
    nu: float = 1e-6,
    iterations: int = 100,
    tolerance: float = 1e-7,
    start: str = "central",
) -> Tensor:
    """Geometric median by the smoothed Weiszfeld algorithm, as in RFA (Pillutla, Kakade &
    Harchaoui, 2022, "Robust aggregation for federated learning", IEEE TSP).

    Approximates ``argmin_z sum_i alpha_i ||z - x_i||`` (alpha = weights / sum(weights)) by
    ``beta_i = alpha_i / max(nu, ||z - x_i||)``, ``z <- sum_i beta_i x_i / sum_i beta_i``.

    The start (``start="central"``) is the mean of the tightest n//2 + 1 rows
    (:func:`.gram.central_rows`): among the honest rows however far the others are, and not an
    input row, where Weiszfeld would stall. ``start="origin"`` starts at the zero vector, as the
    ClippedGossip authors' RFA does (with ``iterations=8, nu=0.1``): a few unconverged steps from
    there are what IPM drags towards zero in their malicious-ring experiment.
    Iteration stops after ``iterations`` steps or when the coefficients of z on the rows change
    by at most ``tolerance`` in l1 norm. (RFA stops on the relative change of the objective; a
    far outlier dominates the objective and would stop it early, far from the median.)

    Args:
        updates: (n, d) tensor.
        weights: optional (n,) non-negative weights alpha (uniform when omitted).
        nu: smoothing radius > 0 (RFA's nu); distances below it count as nu.
        iterations: maximum number of Weiszfeld steps (>= 1).
        tolerance: l1 change of the coefficients below which iteration stops (0: never).
        start: ``"central"`` (default) or ``"origin"``.
    Robustness: breakdown point 1/2 (tolerates f Byzantine rows when 2f < n): the output stays
    within a bounded distance of the honest rows however far the others are. f is not a
    parameter.
    Cost: one Gram product (2 n^2 d flops), O(n^2) per iteration, one GEMV.
    """
    n, _ = check_updates("geometric-median", updates)
    _check_positive("geometric-median", "nu", nu)
    _check_count("geometric-median", "iterations", iterations)
    if not isinstance(tolerance, int | float) or not tolerance >= 0:
        raise AggregationError(f"geometric-median: tolerance must be >= 0, got {tolerance!r}")
    if start not in ("central", "origin"):
        raise AggregationError(f"geometric-median: start must be 'central' or 'origin', got {start!r}")
    if weights is None:
        alpha = torch.full((n,), 1.0 / n, dtype=torch.float64)
    else:
        w = check_weights("geometric-median", weights, n, mixing=False)
        alpha = w / w.sum()
    geo = geometry("geometric-median", updates)
    gram, dist = geo.gram, geo.dist
    coeffs = torch.zeros(n, dtype=torch.float64)  # z = sum_i coeffs_i x_i: zero is the origin
    if start == "central":
        nearest = central_rows(updates, dist)
        coeffs[nearest] = 1.0 / len(nearest)
    for _ in range(iterations):
        beta = alpha / affine_sq_dists(gram, coeffs).sqrt().clamp(min=nu)
        previous, coeffs = coeffs, beta / beta.sum()
        if float((coeffs - previous).abs().sum()) <= tolerance:
            break
    return combine(updates, coeffs)


def rfa_gossip(updates: Tensor, *, own: Tensor, nu: float = 0.1, iterations: int = 8) -> Tensor:
    """RFA in gossip: a few smoothed Weiszfeld steps over own and the neighbours, from own.

    As the ClippedGossip experiments run RFA (He, Karimireddy & Jaggi, 2022, arXiv:2202.01545;
    RFA: Pillutla, Kakade & Harchaoui, 2022): steps towards the geometric median of the node's
    own vector and its n neighbours' vectors, started from the node's own vector.

    With the n + 1 vectors ``v = [x_1, ..., x_n, own]`` (uniform weights) and ``z_0 = own``:
    ``beta_j = 1 / max(nu, ||z - v_j||)``, ``z <- sum_j beta_j v_j / sum_j beta_j``,
    ``iterations`` times, no stopping test. Neighbours within nu of z count alike (the step is their
    mean), so with honest neighbours close together it is nearly plain averaging; a far neighbour
    pulls z by a unit vector at most, whatever it sends. Unlike :func:`geometric_median`'s central
    start (which is not relative to the node), the start is the node's own, trusted, vector, so
    the rule is translation equivariant; nu is an absolute distance, so scale equivariance holds
    with nu scaled along.

    Args:
        updates: (n, d) neighbours' vectors (own not included).
        own: (d,) the node's own vector, trusted; the start.
        nu: smoothing radius > 0 (the experiments' 0.1); distances below it count as nu.
        iterations: number of Weiszfeld steps (>= 1; the experiments' ``rfa8``: 8).
    Robustness: each step moves z by at most ``(n + 1) / (n + 1 - f) max(nu, R)``, with R the
    largest distance from z to the honest vectors and own, whatever the f Byzantine rows are;
    the geometric median it approaches tolerates f with n + 1 > 2f. f is not a parameter.
    Cost: one Gram product ((n + 1)^2 d flops, own appended as a row), O(n^2) per step, one GEMV.
    """
    n, _ = check_updates("rfa-gossip", updates)
    check_own("rfa-gossip", own, updates)
    _check_positive("rfa-gossip", "nu", nu)
    _check_count("rfa-gossip", "iterations", iterations)
    gram = geometry("rfa-gossip", updates, (own,)).gram
    coeffs = torch.zeros(n + 1, dtype=torch.float64)  # z = sum_j coeffs_j v_j, v_n = own
    coeffs[n] = 1.0
    for _ in range(iterations):
        beta = 1.0 / affine_sq_dists(gram, coeffs).sqrt().clamp(min=float(nu))
        coeffs = beta / beta.sum()
    return combine(updates, coeffs, (own,))


def centered_clipping(
    updates: Tensor,
    *,
    tau: float,
    iterations: int = 3,
    start: Tensor | None = None,
) -> Tensor:
    """Centered clipping, CC (Karimireddy, He & Jaggi, 2021, "Learning from history for
    Byzantine robust optimization", ICML).

    ``v <- v + 1/n sum_i (x_i - v) min(1, tau / ||x_i - v||)``, repeated ``iterations`` times
    from ``v_0 = start``.

    Args:
        updates: (n, d) tensor.
        tau: clipping radius > 0.
        iterations: number of clipping steps L (>= 1).
        start: (d,) starting point, e.g. the previous aggregate (the paper's momentum); by
            default the centre of the tightest n//2 + 1 rows (:func:`.gram.central_rows`), an
            input row among the honest ones however far the others are.
    Robustness: each step moves v by at most tau, and by at most f tau / n because of the f
    Byzantine rows; tolerates f with 2f < n. f is not a parameter.
    Cost: one Gram product (with the start appended as an extra row), O(n^2) per iteration,
    one GEMV.
    """
    n, _ = check_updates("centered-clipping", updates)
    _check_positive("centered-clipping", "tau", tau)
    _check_count("centered-clipping", "iterations", iterations)
    extra: tuple[Tensor, ...] = ()
    if start is not None:
        check_own("centered-clipping", start, updates, label="start")
        extra = (start,)
    geo = geometry("centered-clipping", updates, extra)
    gram, dist = geo.gram, geo.dist
    coeffs = torch.zeros(n + len(extra), dtype=torch.float64)
    if start is None:
        coeffs[central_rows(updates, dist[:n, :n])[0]] = 1.0
    else:
        coeffs[n] = 1.0
    for _ in range(iterations):
        radius = affine_sq_dists(gram, coeffs)[:n].sqrt()
        scale = torch.where(radius > tau, tau / radius, torch.ones_like(radius))
        coeffs = coeffs * (1.0 - float(scale.sum()) / n)
        coeffs[:n] += scale / n
    return combine(updates, coeffs, extra)
