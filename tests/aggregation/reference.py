"""Slow, obviously-correct implementations written straight from the papers' definitions.

Plain Python loops over rows, coordinates and subsets, float64 throughout; no Gram matrix, no
vectorised selection. The fast implementations must match them on small random inputs.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import Tensor


def _rows(x: Tensor) -> list[np.ndarray]:
    return [np.array(r, dtype=np.float64) for r in x.double().tolist()]


def _dist2(a: np.ndarray, b: np.ndarray) -> float:
    return float(sum((ai - bi) ** 2 for ai, bi in zip(a.tolist(), b.tolist())))


def _out(values: np.ndarray | list[float]) -> Tensor:
    return torch.tensor(np.asarray(values, dtype=np.float64))


def _mean_of(rows: list[np.ndarray]) -> np.ndarray:
    return sum(rows) / len(rows)


def _column_median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def mean(x: Tensor, weights: Tensor | None = None) -> Tensor:
    rows = _rows(x)
    w = [1.0] * len(rows) if weights is None else weights.double().tolist()
    return _out(sum(wi * r for wi, r in zip(w, rows)) / sum(w))


def median(x: Tensor) -> Tensor:
    rows = _rows(x)
    return _out([_column_median([r[k] for r in rows]) for k in range(len(rows[0]))])


def trimmed_mean(x: Tensor, f: int) -> Tensor:
    rows = _rows(x)
    out = []
    for k in range(len(rows[0])):
        s = sorted(r[k] for r in rows)
        kept = s[f : len(s) - f]
        out.append(sum(kept) / len(kept))
    return _out(out)


def _closest_to_median(values: list[float], beta: int) -> float:
    m = _column_median(values)
    best = min(
        (sorted(values)[a : a + beta] for a in range(len(values) - beta + 1)),
        key=lambda window: max(m - window[0], window[-1] - m),
    )
    return sum(best) / beta


def meamed(x: Tensor, f: int) -> Tensor:
    rows = _rows(x)
    return _out([_closest_to_median([r[k] for r in rows], len(rows) - f) for k in range(len(rows[0]))])


def _krum_score(rows: list[np.ndarray], i: int, k: int) -> float:
    others = sorted(_dist2(rows[i], rows[j]) for j in range(len(rows)) if j != i)
    return sum(others[:k])


def _krum_key(rows: list[np.ndarray], i: int, k: int) -> tuple[float, float, list[float]]:
    """Krum's score; ties (to 10 digits) by the sum of all distances, then by the row's values."""
    total = sum(_dist2(rows[i], rows[j]) for j in range(len(rows)))
    return (float(f"{_krum_score(rows, i, k):.10g}"), total, rows[i].tolist())


def krum(x: Tensor, f: int) -> Tensor:
    rows = _rows(x)
    n = len(rows)
    return _out(rows[min(range(n), key=lambda i: _krum_key(rows, i, n - f - 2))])


def multi_krum(x: Tensor, f: int, m: int) -> Tensor:
    rows = _rows(x)
    n = len(rows)
    chosen = sorted(range(n), key=lambda i: _krum_key(rows, i, n - f - 2))[:m]
    return _out(_mean_of([rows[i] for i in chosen]))


def bulyan(x: Tensor, f: int) -> Tensor:
    rows = _rows(x)
    n = len(rows)
    remaining = list(range(n))
    selected = []
    for _ in range(n - 2 * f):
        sub = [rows[i] for i in remaining]
        k = max(len(sub) - f - 2, 1)
        best = min(range(len(sub)), key=lambda i: _krum_key(sub, i, k))
        selected.append(remaining.pop(best))
    chosen = [rows[i] for i in selected]
    beta = len(chosen) - 2 * f
    return _out([_closest_to_median([r[k] for r in chosen], beta) for k in range(len(rows[0]))])


def _subsets(n: int, k: int) -> list[tuple[int, ...]]:
    return list(itertools.combinations(range(n), k))


def mda_diameter(x: Tensor, f: int) -> float:
    """Smallest diameter (squared) of a subset of n - f rows."""
    rows = _rows(x)
    n = len(rows)
    return min(
        max((_dist2(rows[i], rows[j]) for i, j in itertools.combinations(s, 2)), default=0.0)
        for s in _subsets(n, n - f)
    )


def mda(x: Tensor, f: int) -> Tensor:
    rows = _rows(x)
    n = len(rows)

    def key(s: tuple[int, ...]) -> tuple[float, float]:
        pairs = [_dist2(rows[i], rows[j]) for i, j in itertools.combinations(s, 2)]
        return (max(pairs, default=0.0), sum(pairs))

    best = min(_subsets(n, n - f), key=key)
    return _out(_mean_of([rows[i] for i in best]))


def _covariance_top(rows: list[np.ndarray], p: list[float]) -> tuple[float, np.ndarray, np.ndarray]:
    mu = sum(pi * r for pi, r in zip(p, rows))
    cov = sum(pi * np.outer(r - mu, r - mu) for pi, r in zip(p, rows))
    evals, evecs = np.linalg.eigh(cov)
    return float(evals[-1]), evecs[:, -1], mu


def smea_value(x: Tensor, members: list[int]) -> float:
    rows = _rows(x)
    k = len(members)
    return _covariance_top([rows[i] for i in members], [1.0 / k] * k)[0]


def smea(x: Tensor, f: int) -> Tensor:
    rows = _rows(x)
    n = len(rows)
    best = min(_subsets(n, n - f), key=lambda s: smea_value(x, list(s)))
    return _out(_mean_of([rows[i] for i in best]))


def caf(x: Tensor, f: int) -> Tensor:
    rows = _rows(x)
    n = len(rows)
    c = [1.0] * n
    best_lambda, best_mu = math.inf, _mean_of(rows)
    while sum(c) > n - 2 * f:
        total = sum(c)
        lam, v, mu = _covariance_top(rows, [ci / total for ci in c])
        if lam < best_lambda:
            best_lambda, best_mu = lam, mu
        if lam <= 0:
            break
        tau = [float(np.dot(r - mu, v)) ** 2 for r in rows]
        tau_max = max(t for t, ci in zip(tau, c) if ci > 0)
        c = [max(ci * (1 - t / tau_max), 0.0) for ci, t in zip(c, tau)]
    return _out(best_mu)


def geometric_median(x: Tensor, start: np.ndarray, nu: float, iterations: int) -> Tensor:
    rows = _rows(x)
    z = start.copy()
    for _ in range(iterations):
        betas = [1.0 / max(nu, math.sqrt(_dist2(z, r))) for r in rows]
        z = sum(b * r for b, r in zip(betas, rows)) / sum(betas)
    return _out(z)


def rfa_gossip(x: Tensor, own: Tensor, nu: float, iterations: int) -> Tensor:
    """Smoothed Weiszfeld over own and the rows, uniform weights, from own."""
    o = np.array(own.double().tolist())
    rows = [o, *_rows(x)]
    z = o.copy()
    for _ in range(iterations):
        betas = [1.0 / max(nu, math.sqrt(_dist2(z, r))) for r in rows]
        z = sum(b * r for b, r in zip(betas, rows)) / sum(betas)
    return _out(z)


def centered_clipping(x: Tensor, tau: float, iterations: int, start: np.ndarray) -> Tensor:
    rows = _rows(x)
    v = start.copy()
    for _ in range(iterations):
        step = np.zeros_like(v)
        for r in rows:
            norm = math.sqrt(_dist2(r, v))
            step += (r - v) * (min(1.0, tau / norm) if norm > 0 else 1.0)
        v = v + step / len(rows)
    return _out(v)


def central_rows(x: Tensor) -> list[np.ndarray]:
    """The tightest n//2 + 1 rows, centre first: the centre minimises the sum of squared
    distances to its n//2 + 1 nearest rows (itself included). Ties (to 10 digits) go to the
    smaller k-th distance, then to the smaller row by value."""
    rows = _rows(x)
    k = len(rows) // 2 + 1

    def near(a: np.ndarray) -> list[float]:
        return sorted(_dist2(a, b) for b in rows)[:k]

    center = min(rows, key=lambda a: (float(f"{sum(near(a)):.10g}"), near(a)[-1], a.tolist()))
    by_distance = sorted(
        rows, key=lambda b: (float(f"{_dist2(center, b):.10g}"), _dist2(center, b), b.tolist())
    )
    return by_distance[:k]


def monna(x: Tensor, own: Tensor, f: int) -> Tensor:
    rows = _rows(x)
    o = np.array(own.double().tolist())
    order = sorted(range(len(rows)), key=lambda j: _dist2(rows[j], o))
    chosen = [rows[j] for j in order[: len(rows) - f]] + [o]
    return _out(_mean_of(chosen))


def nnm(x: Tensor, f: int) -> Tensor:
    rows = _rows(x)
    n = len(rows)
    out = []
    for i in range(n):
        order = sorted(range(n), key=lambda j: _dist2(rows[i], rows[j]))
        out.append(_mean_of([rows[j] for j in order[: n - f]]))
    return _out(np.stack(out))


def _clip(v: np.ndarray, tau: float) -> np.ndarray:
    norm = math.sqrt(float(np.dot(v, v)))
    return v * min(1.0, tau / norm) if norm > 0 else v


def static_clipping(x: Tensor, tau: float) -> Tensor:
    return _out(np.stack([_clip(r, tau) for r in _rows(x)]))


def arc(x: Tensor, f: int) -> Tensor:
    rows = _rows(x)
    n = len(rows)
    k = int(2 * f * (n - f) / n)
    norms = sorted((math.sqrt(float(np.dot(r, r))) for r in rows), reverse=True)
    if k == 0:
        return _out(np.stack(rows))
    return _out(np.stack([_clip(r, norms[k]) for r in rows]))


def _gossip(rows: list[np.ndarray], o: np.ndarray, w: list[float], scales: list[float]) -> Tensor:
    return _out(o + sum(wj * sj * (r - o) for wj, sj, r in zip(w, scales, rows)))


def _worst_weight(w: list[float], f: int) -> float:
    return sum(sorted(w, reverse=True)[:f])


def _farthest_until(dist: list[float], w: list[float], weight: float) -> list[int]:
    """Indices of the farthest neighbours, taken one by one until their weight reaches ``weight``."""
    taken: list[int] = []
    held = 0.0
    for j in sorted(range(len(dist)), key=lambda j: -dist[j]):
        if held >= weight * (1 - 1e-9) or weight <= 0:
            break
        taken.append(j)
        held += w[j]
    return taken


def clipped_gossip(x: Tensor, own: Tensor, weights: Tensor, tau: float) -> Tensor:
    rows, o, w = _rows(x), np.array(own.double().tolist()), weights.double().tolist()
    dist = [math.sqrt(_dist2(r, o)) for r in rows]
    return _gossip(rows, o, w, [min(1.0, tau / d) if d > 0 else 1.0 for d in dist])


def adaptive_clipped_gossip(x: Tensor, own: Tensor, weights: Tensor, f: int) -> Tensor:
    rows, o, w = _rows(x), np.array(own.double().tolist()), weights.double().tolist()
    dist = [math.sqrt(_dist2(r, o)) for r in rows]
    delta = _worst_weight(w, f)
    if delta <= 0:
        return _gossip(rows, o, w, [1.0] * len(rows))
    dropped = _farthest_until(dist, w, delta)
    tau = math.sqrt(sum(w[j] * dist[j] ** 2 for j in range(len(rows)) if j not in dropped) / delta)
    return _gossip(rows, o, w, [min(1.0, tau / d) if d > 0 else 1.0 for d in dist])


def cs_plus(x: Tensor, own: Tensor, weights: Tensor, f: int) -> Tensor:
    rows, o, w = _rows(x), np.array(own.double().tolist()), weights.double().tolist()
    dist = [math.sqrt(_dist2(r, o)) for r in rows]
    clipped = _farthest_until(dist, w, 2 * _worst_weight(w, f))
    rest = [dist[j] for j in range(len(rows)) if j not in clipped]
    tau = max(rest) if rest else 0.0
    return _gossip(rows, o, w, [min(1.0, tau / d) if d > 0 else 1.0 for d in dist])


def gts(x: Tensor, own: Tensor, weights: Tensor, f: int) -> Tensor:
    rows, o, w = _rows(x), np.array(own.double().tolist()), weights.double().tolist()
    dist = [math.sqrt(_dist2(r, o)) for r in rows]
    dropped = _farthest_until(dist, w, _worst_weight(w, f))
    return _gossip(rows, o, w, [0.0 if j in dropped else 1.0 for j in range(len(rows))])
