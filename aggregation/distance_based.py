"""Rules that select rows by pairwise distance: Krum, Multi-Krum, Bulyan, MDA, MoNNA.

All pairwise squared distances come from one blocked Gram product (see :mod:`.gram`); the
selection then works on the (n, n) distance matrix and the output is one GEMV or one row copy.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .coordinatewise import mean_of_closest_to_median, sorted_columns
from .gram import all_subsets, combine, geometry, krum_scores, select_rows, sq_dists_to
from .validation import AggregationError, check_f, check_own, check_updates

__all__ = ["bulyan", "krum", "mda", "monna", "multi_krum"]

#: MDA enumerates every subset when there are at most this many (subset, pair) entries to
#: read, C(n, f) (n - f)^2; beyond that it runs the exact threshold search below.
EXACT_ENTRIES = 4_000_000


def krum(updates: Tensor, *, f: int) -> Tensor:
    """Krum (Blanchard, El Mhamdi, Guerraoui & Stainer, 2017, "Machine learning with
    adversaries: Byzantine tolerant gradient descent", NeurIPS).

    ``score(i) = sum of ||x_i - x_j||^2 over the n - f - 2 rows j != i closest to x_i``;
    returns a copy of the row with the smallest score. Exact ties (two mutual nearest
    neighbours tie whenever n - f - 2 = 1) go to the smaller sum of distances to all rows,
    then to the lexicographically smaller row, so the result never depends on row order.

    Args:
        updates: (n, d) tensor.
        f: number of Byzantine rows tolerated; requires n > 2f + 2. The output is always one
            of the input rows, and an honest one when the Byzantine rows are far away.
    Cost: one Gram product (2 n^2 d flops), O(n^2 log n) selection, one row copy.
    """
    n, _ = check_updates("krum", updates)
    check_f("krum", n, f)
    dist = geometry("krum", updates).dist
    best = select_rows(updates, krum_scores(dist, n - f - 2), dist.sum(dim=1), 1)[0]
    return updates[best].clone()


def multi_krum(updates: Tensor, *, f: int, m: int | None = None) -> Tensor:
    """Multi-Krum (Blanchard et al., 2017, NeurIPS): the mean of the m rows with the smallest
    Krum scores (scores computed once, as in :func:`krum`).

    Args:
        updates: (n, d) tensor.
        f: number of Byzantine rows tolerated; requires n > 2f + 2.
        m: number of rows averaged, 1 <= m <= n; default n - f. m = 1 is Krum.
    Cost: one Gram product, O(n^2 log n) selection, one GEMV.
    """
    n, _ = check_updates("multi-krum", updates)
    check_f("multi-krum", n, f)
    m = n - f if m is None else m
    if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= n:
        raise AggregationError(f"multi-krum: needs 1 <= m <= n, got n={n}, m={m!r}")
    dist = geometry("multi-krum", updates).dist
    chosen = select_rows(updates, krum_scores(dist, n - f - 2), dist.sum(dim=1), m)
    coeffs = torch.zeros(n, dtype=torch.float64)
    coeffs[chosen] = 1.0 / m
    return combine(updates, coeffs)


def _recursive_krum(x: Tensor, dist: Tensor, f: int, count: int) -> list[int]:
    """Bulyan's selection: apply Krum ``count`` times, removing the chosen row each time."""
    remaining = list(range(dist.shape[0]))
    chosen: list[int] = []
    for _ in range(count):
        sub = dist[remaining][:, remaining]
        # Near the end |R| - f - 2 drops below 1; one neighbour keeps the score meaningful.
        scores = krum_scores(sub, max(len(remaining) - f - 2, 1))
        best = select_rows(x, scores, sub.sum(dim=1), 1, rows=remaining)[0]
        chosen.append(remaining.pop(best))
    return chosen


def bulyan(updates: Tensor, *, f: int) -> Tensor:
    """Bulyan (El Mhamdi, Guerraoui & Rouault, 2018, "The hidden vulnerability of distributed
    learning in Byzantium", ICML).

    1. Selection: theta = n - 2f rows chosen by applying Krum recursively (each round scores
       the remaining rows R with max(|R| - f - 2, 1) neighbours and removes the winner).
    2. Per coordinate, the mean of the beta = theta - 2f selected values closest to their
       median.

    Args:
        updates: (n, d) tensor.
        f: number of Byzantine rows tolerated; requires n >= 4f + 3.
    Cost: one Gram product, O(n^3 log n) selection, a sort of theta rows per coordinate and
    O((2f + 1) beta d) for the window scan.
    """
    n, _ = check_updates("bulyan", updates)
    check_f("bulyan", n, f)
    theta = n - 2 * f
    dist = geometry("bulyan", updates).dist
    chosen = torch.tensor(sorted(_recursive_krum(updates, dist, f, theta)), device=updates.device)
    ordered = sorted_columns("bulyan", updates, rows=chosen)
    return mean_of_closest_to_median(ordered, theta - 2 * f).to(updates.device)


def _subset_choice_exact(dist: Tensor, k: int) -> list[int]:
    """Subset of size k minimising (max pairwise distance, then sum of pairwise distances)."""
    n = dist.shape[0]
    subsets = all_subsets(n, k)
    block = dist[subsets[:, :, None], subsets[:, None, :]]
    diameter = block.amax(dim=(1, 2))
    spread = block.sum(dim=(1, 2))
    spread[diameter != diameter.min()] = float("inf")
    return subsets[int(spread.argmin())].tolist()


def _vertex_cover(adj: list[int], alive: int, budget: int) -> int | None:
    """A vertex cover of the graph induced on ``alive`` (bit masks) with <= budget vertices.

    Branches on a vertex v of maximum degree: either v is in the cover or all its neighbours
    are. Cost: O(2^budget n) in the worst case, far less in practice.
    """
    best_v, best_deg = -1, 0
    rest = alive
    while rest:
        v = (rest & -rest).bit_length() - 1
        rest &= rest - 1
        deg = (adj[v] & alive).bit_count()
        if deg > best_deg:
            best_v, best_deg = v, deg
    if best_deg == 0:
        return 0
    if budget == 0:
        return None
    v_bit = 1 << best_v
    found = _vertex_cover(adj, alive & ~v_bit, budget - 1)
    if found is not None:
        return found | v_bit
    neighbours = adj[best_v] & alive
    if best_deg <= budget:
        found = _vertex_cover(adj, alive & ~neighbours & ~v_bit, budget - best_deg)
        if found is not None:
            return found | neighbours
    return None


def _subset_choice_threshold(dist: Tensor, k: int) -> list[int]:
    """Exact minimum-diameter subset of size k by binary search on the diameter t.

    A subset of diameter <= t is a clique of the graph {D_ij <= t}, i.e. the complement of a
    vertex cover of size <= n - k of the conflict graph {D_ij > t}. Ties in diameter are broken
    greedily: surplus rows with the largest total distance to the others are dropped.
    """
    n = dist.shape[0]
    budget = n - k
    upper = torch.triu_indices(n, n, offset=1)
    candidates = torch.unique(dist[upper[0], upper[1]]).tolist()
    full = (1 << n) - 1

    def cover_at(t: float) -> int | None:
        conflict = (dist > t).tolist()
        adj = [sum(1 << j for j in range(n) if conflict[i][j]) for i in range(n)]
        return _vertex_cover(adj, full, budget)

    lo, hi = 0, len(candidates) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cover_at(candidates[mid]) is None:
            lo = mid + 1
        else:
            hi = mid
    cover = cover_at(candidates[lo])
    assert cover is not None  # the largest distance leaves no conflict
    members = [i for i in range(n) if not (cover >> i) & 1]
    while len(members) > k:
        inner = dist[members][:, members].sum(dim=1)
        members.pop(int(inner.argmax()))
    return members


def mda(updates: Tensor, *, f: int) -> Tensor:
    """Minimum-diameter averaging, MDA (El Mhamdi, Guerraoui, Guirguis, Hoang & Rouault, 2020,
    "Genuinely distributed Byzantine machine learning", PODC; after Rousseeuw, 1985).

    ``S* = argmin_{|S| = n - f} max_{i, j in S} ||x_i - x_j||``, output ``mean(x_i, i in S*)``.

    The minimum diameter is always exact. Ties in diameter (which happen with positive
    probability: the diameter pair can admit several completions) are broken by the smallest
    sum of pairwise squared distances, exactly when C(n, f) (n - f)^2 <= EXACT_ENTRIES (subsets
    enumerated) and greedily otherwise (binary search on the diameter with an exact
    vertex-cover test, O(log n * 2^f n^2)).

    Args:
        updates: (n, d) tensor.
        f: number of Byzantine rows tolerated; requires 2f < n.
    Cost: one Gram product, the subset search above, one GEMV.
    """
    n, _ = check_updates("mda", updates)
    check_f("mda", n, f)
    k = n - f
    dist = geometry("mda", updates).dist
    if f == 0:
        members = list(range(n))
    elif math.comb(n, f) * k * k <= EXACT_ENTRIES:
        members = _subset_choice_exact(dist, k)
    else:
        members = _subset_choice_threshold(dist, k)
    coeffs = torch.zeros(n, dtype=torch.float64)
    coeffs[members] = 1.0 / k
    return combine(updates, coeffs)


def monna(updates: Tensor, *, own: Tensor, f: int) -> Tensor:
    """MoNNA, nearest-neighbour averaging around the node's own vector (Farhadkhani, Guerraoui,
    Gupta, Hoang, Pinot & Stephan, 2023, "Robust collaborative learning with linear gradient
    overhead", ICML).

    The node's pool is its own vector and the n received rows; it averages the n + 1 - f
    vectors of the pool closest to ``own`` (own itself, at distance 0, and the n - f closest
    received rows): ``out = (own + sum_{j in N} x_j) / (n - f + 1)``.

    Args:
        updates: (n, d) neighbours' vectors (own not included).
        own: (d,) the node's own vector, trusted.
        f: number of Byzantine rows among the n received; requires n + 1 > 2f.
    Cost: one pass for the n distances to own, O(n log n) selection, one GEMV.
    """
    n, _ = check_updates("monna", updates)
    check_own("monna", own, updates)
    check_f("monna", n, f)
    sq = sq_dists_to("monna", updates, own)
    k = n - f
    chosen = torch.sort(sq, stable=True).indices[:k]
    coeffs = torch.zeros(n + 1, dtype=torch.float64)
    coeffs[chosen] = 1.0 / (k + 1)
    coeffs[n] = 1.0 / (k + 1)
    return combine(updates, coeffs, extra=(own,))
