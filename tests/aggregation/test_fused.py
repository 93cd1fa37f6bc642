"""The native kernels of aggregation.fused against float64 references, on both of their code paths."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import phalanx.aggregation as agg
from phalanx.aggregation import fused
from phalanx.gossip.aggregator import Combiner

# The kernel_path fixture only selects a code path: it needs no reset between generated inputs.
fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
needs_kernels = pytest.mark.skipif(not fused.available(), reason="native kernels not built or disabled")


def test_the_kernels_are_built_where_a_c_compiler_exists() -> None:
    """An install on a machine with a C compiler must build them (the build is optional only so that
    installs without one still work); PHALANX_NATIVE=0 switches them off on purpose."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler on this machine")
    import os

    if os.environ.get("PHALANX_NATIVE") == "0":
        pytest.skip("switched off by PHALANX_NATIVE=0")
    assert fused._native is not None, (
        "phalanx.aggregation._native was not built: reinstall (pip install -e .)"
    )
    assert fused.available()


@pytest.fixture(params=["simd", "portable"])
def kernel_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run a test on the AVX2 path (where the CPU has it) and on the portable one."""
    if not fused.available():
        pytest.skip("native kernels not built or disabled")
    assert fused._native is not None
    fused._native.set_simd(request.param == "simd")
    try:
        yield request.param
    finally:
        fused._native.set_simd(True)


def _rows(seed: int, n: int, d: int, far: int = 0, scale: float = 1.0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    x[:far] *= scale
    return [row.clone() for row in x]  # separate buffers, as a gossip node holds them


def _trimmed_reference(rows: list[torch.Tensor], f: int) -> np.ndarray:
    ordered = np.sort(torch.stack(rows).double().numpy(), axis=0)
    return ordered[f : len(rows) - f].mean(axis=0)


# d crosses the kernels' 16- and 32-column steps and their 128-column blocks, so tails are covered.
@given(
    n=st.integers(3, 20),
    d=st.integers(1, 300),
    f=st.integers(1, fused.MAX_F),
    far=st.integers(0, 8),
    scale=st.sampled_from([1.0, 1e30, -1e30]),
    seed=st.integers(0, 2**31 - 1),
)
@fixture_ok
def test_trimmed_mean_matches_the_sorted_reference(kernel_path, n, d, f, far, scale, seed):
    if n < 2 * f + 1:
        assert fused.trimmed_mean_of(_rows(seed, n, d), f) is None
        return
    far = min(far, f)  # up to f far rows: dropped exactly, never cancelled against the honest digits
    rows = _rows(seed, n, d, far, scale)
    out = fused.trimmed_mean_of(rows, f)
    assert out is not None and out.dtype == torch.float32 and out.shape == (d,)
    np.testing.assert_allclose(out.double().numpy(), _trimmed_reference(rows, f), rtol=1e-5, atol=1e-6)


@given(n=st.integers(3, 17), d=st.integers(1, 200), f=st.integers(1, 8), seed=st.integers(0, 2**31 - 1))
def test_both_code_paths_give_the_same_bits(n, d, f, seed):
    if not fused.available() or n < 2 * f + 1:
        return
    assert fused._native is not None
    rows = _rows(seed, n, d)
    simd = fused.trimmed_mean_of(rows, f)
    fused._native.set_simd(False)
    try:
        portable = fused.trimmed_mean_of(rows, f)
    finally:
        fused._native.set_simd(True)
    assert simd is not None and portable is not None
    assert torch.equal(simd, portable)


@given(
    n=st.integers(1, 20),
    d=st.integers(1, 300),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
@fixture_ok
def test_weighted_sum_matches_float64(kernel_path, n, d, seed, data):
    rows = _rows(seed, n, d)
    weights = data.draw(st.lists(st.floats(-2, 2), min_size=n, max_size=n))
    out = fused.weighted_sum_of(rows, weights)
    expected = np.asarray(weights) @ torch.stack(rows).double().numpy()
    assert out is not None
    np.testing.assert_allclose(out.double().numpy(), expected, rtol=1e-5, atol=1e-5)


@given(
    n=st.integers(3, 12),
    d=st.integers(1, 100),
    bad=st.sampled_from([float("nan"), float("inf"), float("-inf")]),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
@fixture_ok
def test_a_non_finite_entry_anywhere_gives_none(kernel_path, n, d, bad, seed, data):
    rows = _rows(seed, n, d)
    rows[data.draw(st.integers(0, n - 1))][data.draw(st.integers(0, d - 1))] = bad
    assert fused.trimmed_mean_of(rows, 1) is None
    assert fused.weighted_sum_of(rows, [1.0] * n) is None
    assert fused.rule_of_rows("median", rows, {}) is None


@given(
    n=st.integers(3, 12),
    d=st.integers(1, 40),
    data=st.data(),
)
@fixture_ok
def test_f1_pass_keeps_ties_zeros_and_every_non_finite_value(kernel_path, n, d, data):
    # f = 1 has its own pass without a per-value probe: ties and signed zeros must still be kept as a
    # multiset, and any number of NaNs and infinities (even +inf and -inf in one column, or NaNs in
    # several rows) must still be found.
    values = st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.5])
    grid = data.draw(st.lists(st.lists(values, min_size=d, max_size=d), min_size=n, max_size=n))
    bad = st.sampled_from([float("nan"), float("inf"), float("-inf")])
    for value, i, j in data.draw(
        st.lists(st.tuples(bad, st.integers(0, n - 1), st.integers(0, d - 1)), max_size=3)
    ):
        grid[i][j] = value
    rows = [torch.tensor(row, dtype=torch.float32) for row in grid]
    out = fused.trimmed_mean_of(rows, 1)
    if not np.isfinite(np.asarray(grid)).all():
        assert out is None
        return
    assert out is not None
    np.testing.assert_allclose(out.double().numpy(), _trimmed_reference(rows, 1), rtol=1e-6, atol=1e-7)


@needs_kernels
def test_rows_the_kernels_cannot_take_give_none() -> None:
    rows = _rows(1, 5, 64)
    assert fused.trimmed_mean_of([r.double() for r in rows], 1) is None
    assert fused.trimmed_mean_of([*rows[:4], torch.randn(65)], 1) is None
    assert fused.trimmed_mean_of([*rows[:4], torch.randn(128)[::2]], 1) is None  # not contiguous
    assert fused.trimmed_mean_of(rows, fused.MAX_F + 1) is None
    assert fused.trimmed_mean_of(rows, 0) is None
    assert fused.weighted_sum_of(rows, [1.0, 2.0]) is None
    assert fused.rule_of_rows("krum", rows, {"f": 1}) is None
    assert fused.rule_of_rows("trimmed-mean", rows, {"f": 1, "pre": ["nnm"]}) is None


@needs_kernels
@given(n=st.integers(3, 17), d=st.integers(1, 100), seed=st.integers(0, 2**31 - 1))
def test_rule_of_rows_equals_the_rules_on_the_stack(n, d, seed):
    rows = _rows(seed, n, d)
    x = torch.stack(rows)
    f = (n - 1) // 2
    for rule, params in (
        ("mean", {}),
        ("median", {}),
        ("trimmed-mean", {"f": f}),
        ("trimmed-mean", {"f": 0}),
    ):
        out = fused.rule_of_rows(rule, rows, params)
        assert out is not None
        torch.testing.assert_close(
            out, agg.aggregate(rule, x.double(), **params).float(), rtol=1e-5, atol=1e-6
        )


@needs_kernels
def test_median_of_huge_values_does_not_overflow() -> None:
    """Two middle values near float32's limit: (a + b) / 2 would overflow; the rule's sorted path
    halves first, and the fused answer steps aside."""
    x = torch.full((4, 3), 3.0e38)
    out = agg.aggregate("median", x)
    assert torch.isfinite(out).all() and torch.allclose(out, torch.full((3,), 3.0e38))


@needs_kernels
@pytest.mark.parametrize(
    ("rule", "params", "include_own"),
    [
        ("mean", {}, True),
        ("trimmed-mean", {"f": 1}, True),
        ("trimmed-mean", {"f": 2}, False),
        ("median", {}, True),
    ],
)
def test_combiner_gives_the_same_vector_with_and_without_the_kernels(
    monkeypatch: pytest.MonkeyPatch, rule: str, params: dict, include_own: bool
) -> None:
    gen = torch.Generator().manual_seed(7)
    own = torch.randn(1000, generator=gen)
    received = {f"p{i}": torch.randn(1000, generator=gen) for i in range(8)}
    received["p3"] = received["p3"] * 1e30  # a far row
    weights = {p: 0.1 for p in received}
    combiner = Combiner(rule, params, include_own=include_own)
    fast = combiner(own, received, weights)
    monkeypatch.setattr(fused, "ENABLED", False)
    slow = combiner(own, received, weights)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)


@needs_kernels
def test_combiner_drops_a_nan_row_through_the_checked_path() -> None:
    own = torch.zeros(100)
    received = {"a": torch.ones(100), "b": torch.ones(100), "c": torch.full((100,), float("nan"))}
    for rule, params in (("mean", {}), ("trimmed-mean", {"f": 1})):
        combiner = Combiner(rule, params)
        out = combiner(own, received, {p: 0.25 for p in received})
        assert torch.isfinite(out).all()
        assert combiner.dropped_nonfinite == 1


@fixture_ok
@given(d=st.integers(1, 300), seed=st.integers(0, 2**31 - 1))
def test_accumulate_deviation_adds_x_minus_ref_and_returns_its_squared_norm(kernel_path, d, seed):
    gen = torch.Generator().manual_seed(seed)
    x, ref, total = (torch.randn(d, generator=gen) for _ in range(3))
    before = total.clone()
    sq = fused.accumulate_deviation(x, ref, total)
    assert sq is not None
    torch.testing.assert_close(total, before + (x - ref))
    assert sq == pytest.approx(float(((x.double() - ref.double()) ** 2).sum()), rel=1e-5)


@needs_kernels
def test_accumulate_deviation_refuses_what_it_cannot_take_and_writes_nothing() -> None:
    x, ref, total = torch.ones(10), torch.zeros(10), torch.zeros(10)
    assert fused.accumulate_deviation(x.double(), ref, total) is None
    assert fused.accumulate_deviation(x, ref[:5], total) is None
    assert torch.equal(total, torch.zeros(10))
    assert fused.accumulate_deviation(torch.full((10,), float("inf")), ref, total) == float("inf")
