"""Inputs and per-rule settings shared by the aggregation tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hypothesis import strategies as st
from torch import Tensor

from phalanx.aggregation import GOSSIP_RULES, RULE_PARAMS, max_f


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    """Inputs here are tiny: one intra-op thread is faster, and immune to a busy machine where
    a parallel region waits for a descheduled worker thread (measured: 10-100x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass(frozen=True, slots=True)
class Sample:
    """Random rows (continuous, so no ties), and the node's own vector and mixing weights."""

    x: Tensor
    own: Tensor
    weights: Tensor
    f: int


def random_rows(seed: int, n: int, d: int, *, scale: float = 1.0, offset: float = 0.0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen, dtype=torch.float64) * scale + offset


def random_weights(seed: int, n: int) -> Tensor:
    """Mixing weights of n neighbours, positive, summing to less than 1."""
    gen = torch.Generator().manual_seed(seed + 1)
    w = torch.rand(n, generator=gen, dtype=torch.float64) + 0.2
    return w / (w.sum() * 1.25)


def params_for(name: str, sample: Sample, **overrides: Any) -> dict[str, Any]:
    """Parameters of rule ``name`` for ``sample``; tau is half the median distance to own (gossip)
    or between rows, a gossip rule's nu a quarter of the median distance to own: they move with the
    data, and no row order changes them."""
    takes = RULE_PARAMS[name]
    params: dict[str, Any] = {}
    if "f" in takes:
        params["f"] = sample.f
    if "tau" in takes:
        if name in GOSSIP_RULES:
            dist = torch.linalg.vector_norm(sample.x - sample.own, dim=1)
        else:
            dist = torch.cdist(sample.x, sample.x).flatten()
        params["tau"] = float(dist.median()) / 2 + 1e-12
    if "nu" in takes and name in GOSSIP_RULES:
        # an absolute distance like tau: a quarter of the median distance to own, so that it moves
        # with the data and some rows fall within it
        dist = torch.linalg.vector_norm(sample.x - sample.own, dim=1)
        params["nu"] = float(dist.median()) / 4 + 1e-12
    if "own" in takes:
        params["own"] = sample.own
    if "weights" in takes and name in GOSSIP_RULES:
        params["weights"] = sample.weights
    params.update(overrides)
    return params


def smallest_n(name: str) -> int:
    return next(n for n in range(1, 64) if max_f(name, n) >= 0)


@st.composite
def samples(
    draw: st.DrawFn, name: str, *, max_n: int = 9, min_d: int = 1, max_d: int = 5, spread: bool = True
) -> Sample:
    """Rows for rule ``name`` with the largest f it tolerates (or a random smaller one)."""
    n = draw(st.integers(smallest_n(name), max(max_n, smallest_n(name))))
    d = draw(st.integers(min_d, max_d))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-2, 1.0, 1e2])) if spread else 1.0
    offset = draw(st.sampled_from([0.0, 5.0, -1e3])) if spread else 0.0
    x = random_rows(seed, n, d, scale=scale, offset=offset)
    own = random_rows(seed + 7, 1, d, scale=scale, offset=offset)[0]
    f_max = max(max_f(name, n), 0)
    f = draw(st.integers(0, f_max)) if draw(st.booleans()) else f_max
    return Sample(x=x, own=own, weights=random_weights(seed, n), f=f)
