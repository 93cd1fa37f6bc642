"""Rules that bound the spread of the averaged rows through the covariance spectrum: CAF, SMEA.

The empirical covariance of weighted rows, ``Sigma = sum_i p_i (x_i - mu)(x_i - mu)^T`` with
``mu = sum_i p_i x_i``, is d x d, but its non-zero spectrum is that of the n x n matrix
``diag(sqrt p) K diag(sqrt p)`` where ``K = (I - 1 p^T) G (I - p 1^T)`` is the Gram matrix
centred on mu. If u is a unit eigenvector of the small matrix for eigenvalue lambda, the
covariance eigenvector is ``v = sum_j sqrt(p_j) u_j (x_j - mu) / sqrt(lambda)`` and
``(x_i - mu)^T v = (K (sqrt(p) * u))_i / sqrt(lambda)``. Both rules therefore work on the
(n, n) Gram matrix only and read the data twice (Gram product, final GEMV).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .gram import all_subsets, combine, geometry
from .validation import check_f, check_updates

__all__ = ["caf", "smea"]

#: SMEA enumerates every subset when C(n, f) (n - f)^2 is at most this; otherwise it searches.
EXACT_ENTRIES = 4_000_000


def _centred(gram: Tensor, p: Tensor) -> Tensor:
    """Gram matrix of the rows centred on the p-weighted mean (p sums to 1)."""
    g_p = gram @ p
    return gram - g_p[:, None] - g_p[None, :] + p @ g_p


def caf(updates: Tensor, *, f: int) -> Tensor:
    """Covariance-bound agnostic filter, CAF (Allouah, Guerraoui, Gupta, Jellouli, Rizk &
    Stephan, 2025; as specified in ByzFL's documentation).

    Start with weights c_i = 1. While ``sum_i c_i > n - 2f``: let p = c / sum(c),
    ``mu = sum_i p_i x_i``, (lambda, v) the top eigenpair of the p-weighted covariance,
    ``tau_i = ((x_i - mu)^T v)^2``, and ``c_i <- c_i (1 - tau_i / max_{j: c_j > 0} tau_j)``.
    Return the weighted mean mu with the smallest lambda met (the plain mean when f = 0).
    Taking the maximum over the rows still weighted zeroes at least one weight per round, so
    the loop ends within 2f + 1 rounds.

    Args:
        updates: (n, d) tensor.
        f: number of Byzantine rows tolerated; requires 2f < n. No bound on the honest
            covariance is needed.
    Cost: one Gram product, at most 2f + 1 symmetric n x n eigendecompositions, one GEMV.
    """
    n, _ = check_updates("caf", updates)
    check_f("caf", n, f)
    gram = geometry("caf", updates).gram
    c = torch.ones(n, dtype=torch.float64)
    best_coeffs = torch.full((n,), 1.0 / n, dtype=torch.float64)
    best_lambda = math.inf
    while float(c.sum()) > n - 2 * f:
        p = c / c.sum()
        centred = _centred(gram, p)
        root = p.sqrt()
        evals, evecs = torch.linalg.eigh(root[:, None] * centred * root[None, :])
        lam = float(evals[-1])
        if lam < best_lambda:
            best_lambda, best_coeffs = lam, p
        if lam <= 0.0:
            break
        tau = (centred @ (root * evecs[:, -1])).square() / lam
        tau_max = float(tau[c > 0].max())
        if tau_max <= 0.0:
            break
        c = (c * (1.0 - tau / tau_max)).clamp(min=0.0)
    return combine(updates, best_coeffs)


def _top_eigenvalues(gram: Tensor, subsets: Tensor) -> Tensor:
    """lambda_max of each subset's empirical covariance (equal weights 1/k)."""
    k = subsets.shape[1]
    block = gram[subsets[:, :, None], subsets[:, None, :]]
    centred = block - block.mean(dim=1, keepdim=True) - block.mean(dim=2, keepdim=True)
    centred = centred + block.mean(dim=(1, 2), keepdim=True)
    return torch.linalg.eigvalsh(centred)[:, -1] / k


def _smea_search(gram: Tensor, k: int) -> list[int]:
    """Greedy removal of the row whose removal lowers lambda_max most, then 1-swap descent."""
    n = gram.shape[0]
    members = list(range(n))
    while len(members) > k:
        candidates = torch.tensor([members[:i] + members[i + 1 :] for i in range(len(members))])
        members = candidates[int(_top_eigenvalues(gram, candidates).argmin())].tolist()
    current = float(_top_eigenvalues(gram, torch.tensor([members]))[0])
    for _ in range(4 * n):
        outside = [j for j in range(n) if j not in members]
        swaps = [[*members[:i], j, *members[i + 1 :]] for i in range(k) for j in outside]
        values = _top_eigenvalues(gram, torch.tensor(swaps))
        best = int(values.argmin())
        if float(values[best]) >= current * (1.0 - 1e-12):
            break
        members, current = swaps[best], float(values[best])
    return sorted(members)


def smea(updates: Tensor, *, f: int) -> Tensor:
    """Smallest maximum eigenvalue averaging, SMEA (Allouah, Guerraoui, Gupta, Pinot & Stephan,
    2023, "On the privacy-robustness-utility trilemma in distributed learning", ICML).

    ``S* = argmin_{|S| = n - f} lambda_max(Sigma_S)``, ``Sigma_S`` the empirical covariance of
    the rows in S (weights 1/|S|); output ``mean(x_i, i in S*)``.

    Exact (every subset enumerated) when C(n, f) (n - f)^2 <= EXACT_ENTRIES. Larger problems are
    NP-hard in general; they get a greedy removal followed by 1-swap descent, which returns a
    local optimum, not a certified global one.

    Args:
        updates: (n, d) tensor.
        f: number of Byzantine rows tolerated; requires 2f < n.
    Cost: one Gram product, C(n, f) eigendecompositions of (n - f) x (n - f) matrices (or
    O(n f) per descent step), one GEMV.
    """
    n, _ = check_updates("smea", updates)
    check_f("smea", n, f)
    k = n - f
    gram = geometry("smea", updates).gram
    if f == 0:
        members = list(range(n))
    elif math.comb(n, f) * k * k <= EXACT_ENTRIES:
        subsets = all_subsets(n, k)
        members = subsets[int(_top_eigenvalues(gram, subsets).argmin())].tolist()
    else:
        members = _smea_search(gram, k)
    coeffs = torch.zeros(n, dtype=torch.float64)
    coeffs[members] = 1.0 / k
    return combine(updates, coeffs)
