"""Every fast implementation equals the slow, obviously-correct one of reference.py."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from phalanx.aggregation import aggregate, coordinatewise, distance_based, max_f, pre_aggregate, spectral
from phalanx.aggregation.gram import geometry

from . import reference as ref
from .conftest import Sample, params_for, random_rows, samples


def _close(fast: torch.Tensor, slow: torch.Tensor) -> None:
    torch.testing.assert_close(fast, slow, rtol=1e-7, atol=1e-9 * max(1.0, float(slow.abs().max())))


SIMPLE = {
    "median": lambda s, p: ref.median(s.x),
    "trimmed-mean": lambda s, p: ref.trimmed_mean(s.x, p["f"]),
    "meamed": lambda s, p: ref.meamed(s.x, p["f"]),
    "krum": lambda s, p: ref.krum(s.x, p["f"]),
    "multi-krum": lambda s, p: ref.multi_krum(s.x, p["f"], s.x.shape[0] - p["f"]),
    "bulyan": lambda s, p: ref.bulyan(s.x, p["f"]),
    "mda": lambda s, p: ref.mda(s.x, p["f"]),
    "caf": lambda s, p: ref.caf(s.x, p["f"]),
    "smea": lambda s, p: ref.smea(s.x, p["f"]),
    "monna": lambda s, p: ref.monna(s.x, s.own, p["f"]),
    "clipped-gossip": lambda s, p: ref.clipped_gossip(s.x, s.own, s.weights, p["tau"]),
    "adaptive-clipped-gossip": lambda s, p: ref.adaptive_clipped_gossip(s.x, s.own, s.weights, p["f"]),
    "cs-plus": lambda s, p: ref.cs_plus(s.x, s.own, s.weights, p["f"]),
    "gts": lambda s, p: ref.gts(s.x, s.own, s.weights, p["f"]),
}


@pytest.mark.parametrize("name", sorted(SIMPLE))
@given(data=st.data())
def test_rule_matches_reference(name: str, data: st.DataObject) -> None:
    sample = data.draw(samples(name, max_n=8, max_d=4))
    params = params_for(name, sample)
    _close(aggregate(name, sample.x, **params), SIMPLE[name](sample, params))


@given(data=st.data())
def test_weighted_mean_matches_reference(data: st.DataObject) -> None:
    sample = data.draw(samples("mean"))
    _close(aggregate("mean", sample.x), ref.mean(sample.x))
    _close(aggregate("mean", sample.x, weights=sample.weights), ref.mean(sample.x, sample.weights))


@given(data=st.data(), m=st.integers(1, 12))
def test_multi_krum_any_m(data: st.DataObject, m: int) -> None:
    sample = data.draw(samples("multi-krum", max_n=12))
    m = min(m, sample.x.shape[0])
    _close(aggregate("multi-krum", sample.x, f=sample.f, m=m), ref.multi_krum(sample.x, sample.f, m))


def _geomed_start(x: torch.Tensor) -> np.ndarray:
    members = ref.central_rows(x)
    return sum(members) / len(members)


@given(data=st.data(), iterations=st.integers(1, 30))
def test_geometric_median_matches_weiszfeld(data: st.DataObject, iterations: int) -> None:
    sample = data.draw(samples("geometric-median", min_d=2))
    fast = aggregate("geometric-median", sample.x, iterations=iterations, tolerance=0.0, nu=1e-6)
    slow = ref.geometric_median(sample.x, _geomed_start(sample.x), 1e-6, iterations)
    torch.testing.assert_close(fast, slow, rtol=1e-6, atol=1e-8 * max(1.0, float(sample.x.abs().max())))


@given(data=st.data(), iterations=st.integers(1, 12), nu_scale=st.sampled_from([0.01, 0.25, 4.0]))
def test_rfa_gossip_matches_weiszfeld_from_own(data: st.DataObject, iterations: int, nu_scale: float) -> None:
    """nu from far below most distances (nearly plain Weiszfeld) to above most (near the mean); d >= 2 as for
    the geometric median: in one dimension Weiszfeld creeps onto a row, where rounding dominates."""
    sample = data.draw(samples("rfa-gossip", max_n=8, min_d=2, max_d=4))
    nu = params_for("rfa-gossip", sample)["nu"] * 4 * nu_scale
    fast = aggregate("rfa-gossip", sample.x, own=sample.own, nu=nu, iterations=iterations)
    slow = ref.rfa_gossip(sample.x, sample.own, nu, iterations)
    scale = max(1.0, float(sample.x.abs().max()), float(sample.own.abs().max()))
    torch.testing.assert_close(fast, slow, rtol=1e-6, atol=1e-8 * scale)


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(3, 9), d=st.integers(2, 5))
def test_geometric_median_is_optimal(seed: int, n: int, d: int) -> None:
    """First-order optimality: the unit vectors towards the rows sum to zero; or, when the median
    is a row v (Weiszfeld then creeps towards it), the others' unit vectors from v sum to <= 1."""
    x = random_rows(seed, n, d)
    z = aggregate("geometric-median", x, iterations=5000, tolerance=1e-15, nu=1e-12)
    norms = torch.linalg.vector_norm(x - z, dim=1)
    v = int(norms.argmin())
    others = [i for i in range(n) if i != v]
    pull = x[v] - x[others]
    at_vertex = (pull / torch.linalg.vector_norm(pull, dim=1)[:, None]).sum(0)
    if float(torch.linalg.vector_norm(at_vertex)) <= 1.0:
        assert float(norms[v]) < 1e-2
        return
    grad = ((x - z) / norms[:, None]).sum(dim=0)
    assert float(torch.linalg.vector_norm(grad)) < 1e-4 * n


@given(data=st.data(), iterations=st.integers(1, 6), with_start=st.booleans())
def test_centered_clipping_matches_reference(data: st.DataObject, iterations: int, with_start: bool) -> None:
    sample = data.draw(samples("centered-clipping"))
    tau = params_for("centered-clipping", sample)["tau"]
    if with_start:
        fast = aggregate("centered-clipping", sample.x, tau=tau, iterations=iterations, start=sample.own)
        start = np.array(sample.own.tolist())
    else:
        fast = aggregate("centered-clipping", sample.x, tau=tau, iterations=iterations)
        start = ref.central_rows(sample.x)[0]
    _close(fast, ref.centered_clipping(sample.x, tau, iterations, start))


@given(data=st.data())
def test_nnm_clipping_arc_match_reference(data: st.DataObject) -> None:
    sample = data.draw(samples("nnm"))
    x, f = sample.x, sample.f
    _close(pre_aggregate(x, ["nnm"], f=f), ref.nnm(x, f))
    _close(pre_aggregate(x, ["arc"], f=f), ref.arc(x, f))
    tau = float(torch.linalg.vector_norm(x, dim=1).median())
    _close(pre_aggregate(x, ["clipping"], tau=tau), ref.static_clipping(x, tau))


@given(
    seed=st.integers(0, 2**31 - 1), n=st.integers(1, 12), s=st.integers(1, 14), bucket_seed=st.integers(0, 9)
)
def test_bucketing_averages_a_partition(seed: int, n: int, s: int, bucket_seed: int) -> None:
    x = random_rows(seed, n, 3)
    out = pre_aggregate(x, ["bucketing"], s=s, seed=bucket_seed)
    sizes = [min(s, n - b * s) for b in range(math.ceil(n / s))]
    assert out.shape == (len(sizes), 3)
    torch.testing.assert_close((out * torch.tensor(sizes, dtype=x.dtype)[:, None]).sum(0), x.sum(0))
    # Each bucket mean is the mean of some rows: find them by brute force.
    unused = set(range(n))
    for row, size in zip(out, sizes):
        match = next(
            c for c in itertools.combinations(sorted(unused), size) if torch.allclose(x[list(c)].mean(0), row)
        )
        unused -= set(match)
    assert not unused
    torch.testing.assert_close(out, pre_aggregate(x, ["bucketing"], s=s, seed=bucket_seed))


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(6, 12), d=st.integers(1, 4), data=st.data())
def test_mda_threshold_search_finds_the_minimum_diameter(
    seed: int, n: int, d: int, data: st.DataObject
) -> None:
    x = random_rows(seed, n, d)
    f = data.draw(st.integers(1, max_f("mda", n)))
    dist = geometry("mda", x).dist
    members = distance_based._subset_choice_threshold(dist, n - f)
    assert len(set(members)) == n - f
    diameter = max((float(dist[i, j]) for i, j in itertools.combinations(members, 2)), default=0.0)
    assert math.isclose(diameter, ref.mda_diameter(x, f), rel_tol=1e-9, abs_tol=1e-12)


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(5, 9), d=st.integers(1, 4), data=st.data())
def test_smea_search_is_a_swap_local_optimum(seed: int, n: int, d: int, data: st.DataObject) -> None:
    x = random_rows(seed, n, d)
    f = data.draw(st.integers(1, max_f("smea", n)))
    members = spectral._smea_search(geometry("smea", x).gram, n - f)
    value = ref.smea_value(x, members)
    best = min(ref.smea_value(x, list(c)) for c in itertools.combinations(range(n), n - f))
    assert value >= best - 1e-12
    for i, j in itertools.product(members, set(range(n)) - set(members)):
        swapped = [j if m == i else m for m in members]
        assert ref.smea_value(x, swapped) >= value * (1 - 1e-9) - 1e-15


def test_mda_and_smea_large_n_take_the_search_path() -> None:
    x = random_rows(3, 32, 50)
    for name in ("mda", "smea"):
        out = aggregate(name, x, f=8)
        assert out.shape == (50,) and bool(torch.isfinite(out).all())


def test_torch_sort_path_matches_numpy_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The path taken on CUDA (and for bfloat16): torch.sort instead of numpy.sort."""
    x = random_rows(5, 11, 40)
    cases = (("median", {}), ("trimmed-mean", {"f": 3}), ("meamed", {"f": 3}), ("bulyan", {"f": 2}))
    expected = {name: aggregate(name, x, **params) for name, params in cases}
    monkeypatch.setattr(coordinatewise, "_NUMPY_SORTABLE", ())
    for name, params in cases:
        torch.testing.assert_close(aggregate(name, x, **params), expected[name], rtol=0, atol=0)
    half = aggregate("median", x.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.double(), ref.median(x.to(torch.bfloat16).double()), rtol=1e-2, atol=1e-2)


def test_sample_helper_is_deterministic() -> None:
    a = Sample(x=random_rows(1, 3, 2), own=random_rows(2, 1, 2)[0], weights=torch.ones(3) / 4, f=0)
    assert torch.equal(a.x, random_rows(1, 3, 2))


def test_window_scan_by_blocks_equals_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    x = random_rows(8, 11, 1000)
    whole = {name: aggregate(name, x, f=2) for name in ("meamed", "bulyan")}
    monkeypatch.setattr(coordinatewise, "WINDOW_BLOCK", 96)  # 1000 = 10 blocks + a partial one
    for name, expected in whole.items():
        torch.testing.assert_close(aggregate(name, x, f=2), expected, rtol=0, atol=0)


def test_parallel_column_sort(monkeypatch: pytest.MonkeyPatch) -> None:
    x = random_rows(9, 7, 1001).float()
    expected = torch.from_numpy(np.sort(x.numpy(), axis=0))
    monkeypatch.setattr(coordinatewise, "PARALLEL_SORT_COLUMNS", 10)
    torch.set_num_threads(3)  # restored by the autouse fixture
    assert torch.equal(coordinatewise.sorted_columns("test", x), expected)
    rows = torch.tensor([0, 2, 5])
    assert torch.equal(coordinatewise.sorted_columns("test", x, rows=rows), torch.sort(x[rows], dim=0).values)
    assert torch.equal(x, random_rows(9, 7, 1001).float())  # input untouched


@given(
    n=st.integers(3, 12),
    d=st.integers(1, 40),
    f=st.integers(1, 2),
    scale=st.sampled_from([1.0, 1e20]),
    seed=st.integers(0, 2**31 - 1),
)
def test_trimmed_mean_selection_path_equals_the_sort_path(n, d, f, scale, seed):
    if 2 * f >= n:
        return
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    x[:f] *= scale  # f far rows: the selection must drop them exactly, with no cancellation
    fast = coordinatewise._trimmed_by_selection(x, f)
    ordered = coordinatewise.sorted_columns("trimmed-mean", x)
    _close(fast, ordered[f : n - f].mean(dim=0))
    _close(fast, ref.trimmed_mean(x, f))


def test_geometric_median_from_the_origin_is_weiszfeld_from_zero() -> None:
    """start="origin" (the ClippedGossip authors' RFA): the first step weighs each row by
    1 / max(nu, ||x_i||), and a bad start name is refused."""
    x = torch.tensor([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0]], dtype=torch.float64)
    beta = 1.0 / torch.tensor([5.0, 1.0, 10.0]).clamp(min=0.1)
    expected = (beta / beta.sum()).to(x.dtype) @ x
    got = aggregate("geometric-median", x, iterations=1, nu=0.1, start="origin")
    torch.testing.assert_close(got, expected)
    central = aggregate("geometric-median", x, iterations=1, nu=0.1)
    assert not torch.allclose(central, expected)
    with pytest.raises(ValueError, match="start must be"):
        aggregate("geometric-median", x, start="mean")
