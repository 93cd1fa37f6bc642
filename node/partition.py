"""Split a training set across n nodes: IID, Dirichlet label skew, pathological k shards per node.

Every partitioner is a pure function of (labels, n, seed, parameters), so a node computes its own shard
from (dataset, partition, n, index, seed) alone. The shards are disjoint and cover all indices.

Spec strings: ``iid``, ``dirichlet:ALPHA`` (e.g. ``dirichlet:0.5``), ``shards:K`` (e.g. ``shards:2``), and
``iid:relays=F`` (e.g. ``iid:relays=0.2``): a seeded choice of ``round(F * n)`` nodes gets no data (relays:
they only forward and mix), and the others split the data IID.
"""

from __future__ import annotations

import math

import numpy as np

PARTITION_NAMES = ("iid", "iid:relays=FRACTION", "dirichlet:ALPHA", "shards:K")


class PartitionError(ValueError):
    """A partition spec or size that cannot be satisfied."""


def _check(num_samples: int, n: int) -> None:
    if n < 1:
        raise PartitionError(f"need at least 1 node, got {n}")
    if n > num_samples:
        raise PartitionError(f"more nodes ({n}) than training samples ({num_samples})")


def iid(labels: np.ndarray, n: int, *, seed: int) -> list[np.ndarray]:
    """A seeded random permutation cut into n near-equal parts (sizes differ by at most one)."""
    _check(len(labels), n)
    perm = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(part) for part in np.array_split(perm, n)]


def relay_nodes(n: int, fraction: float, *, seed: int) -> list[int]:
    """The ``round(fraction * n)`` nodes without data of ``iid:relays=FRACTION``: a seeded draw, sorted."""
    k = round(fraction * n)
    if k >= n:
        raise PartitionError(f"iid:relays={fraction} gives all {n} nodes no data; keep at least one")
    return sorted(int(i) for i in np.random.default_rng([seed, 0x7E1A]).choice(n, size=k, replace=False))


def iid_with_relays(labels: np.ndarray, n: int, *, relays: float, seed: int) -> list[np.ndarray]:
    """:func:`iid` over the nodes that are not relays (:func:`relay_nodes`); relays get empty shards."""
    _check(len(labels), n)
    empty = set(relay_nodes(n, relays, seed=seed))
    holders = [i for i in range(n) if i not in empty]
    parts = iid(labels, len(holders), seed=seed)
    out = [np.zeros(0, dtype=np.int64) for _ in range(n)]
    for i, part in zip(holders, parts):
        out[i] = part
    return out


def dirichlet(labels: np.ndarray, n: int, *, alpha: float, seed: int) -> list[np.ndarray]:
    """Label skew (Hsu et al., 2019): for each class c, proportions p_c ~ Dir(alpha * 1_n) split c's samples.

    Small alpha gives each node few classes; alpha -> infinity approaches an IID split. A node may get
    an empty shard when alpha is small.
    """
    _check(len(labels), n)
    if not alpha > 0 or not np.isfinite(alpha):
        raise PartitionError(f"dirichlet alpha must be a finite number > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(n)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        props = rng.dirichlet(np.full(n, float(alpha)))
        cuts = np.round(np.cumsum(props)[:-1] * len(idx)).astype(np.int64)
        for node, piece in enumerate(np.split(idx, cuts)):
            parts[node].append(piece)
    return [np.sort(np.concatenate(p)) for p in parts]


def shards(labels: np.ndarray, n: int, *, k: int, seed: int) -> list[np.ndarray]:
    """Pathological non-IID (McMahan et al., 2017): sort by label, cut into n*k shards, deal k to each node."""
    _check(len(labels), n)
    if k < 1:
        raise PartitionError(f"shards per node must be >= 1, got {k}")
    if n * k > len(labels):
        raise PartitionError(f"{n} nodes x {k} shards exceeds the {len(labels)} training samples")
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    pieces = np.array_split(order, n * k)
    deal = rng.permutation(n * k).reshape(n, k)
    return [np.sort(np.concatenate([pieces[j] for j in row])) for row in deal]


def parse_partition(spec: str) -> tuple[str, float]:
    """Parse a partition spec into (kind, parameter); raises PartitionError naming the problem."""
    kind, _, arg = spec.partition(":")
    if kind == "iid" and not arg:
        return "iid", 0.0
    if kind == "iid" and arg.startswith("relays="):
        try:
            fraction = float(arg.removeprefix("relays="))
        except ValueError:
            fraction = math.nan
        if not 0 <= fraction < 1:
            raise PartitionError(
                f"iid:relays needs a fraction of nodes in [0, 1), as in iid:relays=0.2; got {spec!r}"
            )
        return "iid", fraction
    if kind == "dirichlet":
        try:
            alpha = float(arg)
        except ValueError:
            raise PartitionError(
                f"dirichlet needs a number alpha, as in dirichlet:0.5; got {spec!r}"
            ) from None
        if not alpha > 0 or not np.isfinite(alpha):
            raise PartitionError(f"dirichlet alpha must be a finite number > 0, got {arg}")
        return "dirichlet", alpha
    if kind == "shards":
        if not arg.isdigit() or int(arg) < 1:
            raise PartitionError(f"shards needs a whole number k >= 1, as in shards:2; got {spec!r}")
        return "shards", float(arg)
    raise PartitionError(f"unknown partition {spec!r}; choose one of: {', '.join(PARTITION_NAMES)}")


def partition(labels: np.ndarray, n: int, spec: str, *, seed: int) -> list[np.ndarray]:
    """All n shards (sorted index arrays) of a training set with the given labels."""
    kind, arg = parse_partition(spec)
    labels = np.asarray(labels)
    if kind == "iid":
        return iid_with_relays(labels, n, relays=arg, seed=seed) if arg else iid(labels, n, seed=seed)
    if kind == "dirichlet":
        return dirichlet(labels, n, alpha=arg, seed=seed)
    return shards(labels, n, k=int(arg), seed=seed)


def shard_of(labels: np.ndarray, n: int, index: int, spec: str, *, seed: int) -> np.ndarray:
    """The shard of node ``index`` (0-based) — the same array every node computes for it."""
    if not 0 <= index < n:
        raise PartitionError(f"node index {index} out of range for {n} nodes (0..{n - 1})")
    return partition(labels, n, spec, seed=seed)[index]
