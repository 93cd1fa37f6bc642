"""The shared geometry: accurate distances when rows are far from the origin and close to each
other (cancellation), when float32 overflows, and when the first row is an outlier."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from phalanx.aggregation import aggregate, gram
from phalanx.aggregation.gram import geometry, select_rows, sq_dists_to

from .conftest import random_rows


def _exact(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return torch.cdist(x, x).square()


def _relative_error(fast: torch.Tensor, exact: torch.Tensor) -> float:
    off = ~torch.eye(exact.shape[0], dtype=torch.bool)
    return float(((fast - exact).abs()[off] / exact[off]).max())


@given(seed=st.integers(0, 2**31 - 1), offset=st.sampled_from([1.0, 100.0, 1e4]), n=st.integers(3, 10))
def test_float32_rows_close_together_far_from_origin(seed: int, offset: float, n: int) -> None:
    """Models after gossip: norm^2 ~ d offset^2, distances^2 ~ d 1e-6. The plain GEMM's error
    (eps ||x||^2) would exceed the distances; the centred path keeps them to 1e-3."""
    base = random_rows(seed, 1, 500) * offset
    x = (base + 1e-3 * random_rows(seed + 1, n, 500)).float()
    dist = geometry("test", x).dist
    assert _relative_error(dist, _exact(x)) < 1e-3
    k32 = aggregate("krum", x, f=(n - 3) // 2)
    k64 = aggregate("krum", x.double(), f=(n - 3) // 2)
    torch.testing.assert_close(k32.double(), k64)


def test_plain_gemm_is_kept_when_accurate() -> None:
    x = random_rows(1, 8, 300).float()
    assert _relative_error(geometry("test", x).dist, _exact(x)) < 1e-4


@given(seed=st.integers(0, 2**31 - 1), first=st.booleans(), exponent=st.floats(20, 37))
def test_float32_overflow_falls_back_to_float64(seed: int, first: bool, exponent: float) -> None:
    """Rows of norm up to 1e37 overflow float32 products; the honest distances stay exact, even
    when the huge row comes first (it would be the centre of the first pass)."""
    x = random_rows(seed, 7, 40).float()
    bad = 0 if first else 4
    x[bad] = 10.0**exponent / 40**0.5
    dist = geometry("test", x).dist
    honest = [i for i in range(7) if i != bad]
    exact = _exact(x[honest])
    assert _relative_error(dist[honest][:, honest], exact) < 1e-5
    assert bool((dist[bad, honest] > 1e30).all())


@given(seed=st.integers(0, 2**31 - 1), offset=st.sampled_from([0.0, 1e3]))
def test_sq_dists_to_own(seed: int, offset: float) -> None:
    x = (random_rows(seed, 6, 300) * 1e-3 + offset).float()
    own = x[0] + 1e-3
    exact = (x.double() - own.double()).square().sum(1)
    torch.testing.assert_close(sq_dists_to("test", x, own), exact, rtol=1e-4, atol=0)
    x[2] = 1e30
    assert float(sq_dists_to("test", x, own)[2]) > 1e59


def test_select_rows_breaks_exact_ties_by_value() -> None:
    x = torch.tensor([[3.0, 1.0], [1.0, 5.0], [1.0, 2.0], [0.0, 9.0]])
    primary = torch.tensor([1.0, 1.0, 1.0, 0.5])
    assert select_rows(x, primary, torch.zeros(4), 4) == [3, 2, 1, 0]
    secondary = torch.tensor([0.0, 0.0, 1.0, 0.0])
    assert select_rows(x, primary, secondary, 2) == [3, 1]


def test_blocked_paths_equal_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """The column-block loops (centred Gram, distances to own) give the one-block result."""
    x = (random_rows(4, 6, 1000) * 1e-3 + 50.0).float()
    own = x[1] + 1e-3
    whole_dist, whole_sq = geometry("test", x).dist, sq_dists_to("test", x, own)
    monkeypatch.setattr(gram, "BLOCK", 96)
    monkeypatch.setattr(gram, "DIFF_BLOCK", 70)
    torch.testing.assert_close(geometry("test", x).dist, whole_dist, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(sq_dists_to("test", x, own), whole_sq, rtol=1e-5, atol=1e-9)


@given(seed=st.integers(0, 2**31 - 1), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_outliers_at_several_scales(seed: int, dtype: torch.dtype) -> None:
    """Rows at 1e20 and 1e10 around honest rows of spread 1: the first centre resolves only the
    1e20 scale; recentring refines until the honest distances are exact."""
    x = random_rows(seed, 9, 3).to(dtype)
    x[0] = 1e20
    x[1] = -1e10
    dist = geometry("test", x).dist
    honest = list(range(2, 9))
    assert _relative_error(dist[honest][:, honest], _exact(x[honest])) < 1e-5


@given(seed=st.integers(0, 2**31 - 1))
def test_hidden_cluster_next_to_far_apart_outliers(seed: int) -> None:
    """Honest rows close together far from the origin, Byzantine rows far apart from each other:
    the typical nearest distance is large, yet the honest distances need the centred product."""
    x = (random_rows(seed, 9, 200) * 1e-3 + 1e3).float()
    x[:4] = (random_rows(seed + 1, 4, 200) * 1e3).float()
    honest = list(range(4, 9))
    dist = geometry("test", x).dist
    assert _relative_error(dist[honest][:, honest], _exact(x[honest])) < 1e-3
