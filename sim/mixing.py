"""Mixing weights of a graph and the spectral gap they give.

- ``metropolis`` (Metropolis-Hastings): ``w_ij = 1 / (1 + max(d_i, d_j))`` — symmetric, doubly stochastic;
- ``uniform``: ``w_ij = 1 / (d_i + 1)`` — row stochastic (symmetric only on regular graphs);
- ``max-degree``: ``w_ij = 1 / (d_max + 1)`` — symmetric, doubly stochastic.

A node's own weight is one minus the sum of its neighbours' weights.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

MIXING_NAMES = ("metropolis", "uniform", "max-degree")


class MixingError(ValueError):
    pass


def neighbour_weights(graph: nx.Graph, scheme: str) -> dict[int, dict[int, float]]:
    """``node -> {neighbour: weight}`` for every node of the graph."""
    deg = dict(graph.degree())
    if scheme == "metropolis":
        return {i: {j: 1.0 / (1 + max(deg[i], deg[j])) for j in graph[i]} for i in graph}
    if scheme == "uniform":
        return {i: {j: 1.0 / (deg[i] + 1) for j in graph[i]} for i in graph}
    if scheme == "max-degree":
        w = 1.0 / (max(deg.values()) + 1)
        return {i: {j: w for j in graph[i]} for i in graph}
    raise MixingError(f"unknown mixing weights {scheme!r}; choose one of: {', '.join(MIXING_NAMES)}")


def mixing_matrix(graph: nx.Graph, scheme: str) -> np.ndarray:
    n = graph.number_of_nodes()
    w = np.zeros((n, n))
    for i, row in neighbour_weights(graph, scheme).items():
        for j, value in row.items():
            w[i, j] = value
        w[i, i] = 1.0 - sum(row.values())
    return w


def spectral_gap(w: np.ndarray) -> float:
    """``1 - |lambda_2|``: the second-largest eigenvalue modulus of W; larger mixes faster."""
    if np.allclose(w, w.T):
        eig = np.abs(np.linalg.eigvalsh(w))
    else:
        eig = np.abs(np.linalg.eigvals(w))
    eig = np.sort(eig)[::-1]
    return float(1.0 - eig[1]) if len(eig) > 1 else 1.0
