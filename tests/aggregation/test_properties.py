"""Properties every rule must have: shape, finiteness, permutation invariance, fixed point on
identical rows, translation and positive-scale equivariance."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from phalanx.aggregation import GOSSIP_RULES, RULES, aggregate, pre_aggregate

from .conftest import Sample, params_for, samples

ALL = sorted(RULES)
#: In one dimension with an even number of rows the geometric median is any point between the
#: two middle rows, and the central row that starts geometric median and centered clipping is tied:
#: rounding (shifted or scaled data) may pick another minimiser. Equivariance needs d >= 2.
FLAT_IN_1D = {"geometric-median", "centered-clipping"}


def _close(a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
    torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9 * max(scale, 1.0))


def _scale_of(sample: Sample) -> float:
    return float(max(sample.x.abs().max(), sample.own.abs().max()))


@pytest.mark.parametrize("name", ALL)
@given(data=st.data())
def test_shape_dtype_finite(name: str, data: st.DataObject) -> None:
    sample = data.draw(samples(name))
    out = aggregate(name, sample.x, **params_for(name, sample))
    assert out.shape == (sample.x.shape[1],)
    assert out.dtype == sample.x.dtype and out.device == sample.x.device
    assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("name", ALL)
@given(data=st.data())
def test_float32_in_float32_out(name: str, data: st.DataObject) -> None:
    """Same result as in float64, up to float32 rounding (d >= 2: with d = 1 and even n the
    starting row is tied up to rounding, and the two precisions may break the tie differently)."""
    sample = data.draw(samples(name, spread=False, min_d=2))
    x32 = sample.x.float()
    s32 = Sample(x=x32, own=sample.own.float(), weights=sample.weights.float(), f=sample.f)
    out = aggregate(name, x32, **params_for(name, s32))
    ref = aggregate(name, sample.x, **params_for(name, sample))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", ALL)
@given(data=st.data())
def test_permutation_invariance(name: str, data: st.DataObject) -> None:
    sample = data.draw(samples(name))
    perm = torch.randperm(
        sample.x.shape[0], generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99)))
    )
    shuffled = Sample(x=sample.x[perm], own=sample.own, weights=sample.weights[perm], f=sample.f)
    out = aggregate(name, sample.x, **params_for(name, sample))
    again = aggregate(name, shuffled.x, **params_for(name, shuffled))
    _close(again, out, _scale_of(sample))


@pytest.mark.parametrize("name", ALL)
@given(data=st.data())
def test_identical_rows_are_a_fixed_point(name: str, data: st.DataObject) -> None:
    sample = data.draw(samples(name))
    row = sample.x[0]
    same = Sample(x=row.expand_as(sample.x).clone(), own=row.clone(), weights=sample.weights, f=sample.f)
    params = params_for(name, same, **({"tau": 1.0} if "tau" in params_for(name, sample) else {}))
    _close(aggregate(name, same.x, **params), row, _scale_of(sample))


@pytest.mark.parametrize("name", ALL)
@given(data=st.data(), shift=st.floats(-100, 100))
def test_translation_equivariance(name: str, data: st.DataObject, shift: float) -> None:
    sample = data.draw(samples(name, min_d=2 if name in FLAT_IN_1D else 1))
    v = torch.linspace(-1, 1, sample.x.shape[1], dtype=torch.float64) * shift
    moved = Sample(x=sample.x + v, own=sample.own + v, weights=sample.weights, f=sample.f)
    out = aggregate(name, sample.x, **params_for(name, sample))
    _close(aggregate(name, moved.x, **params_for(name, moved)), out + v, _scale_of(moved))


@pytest.mark.parametrize("name", ALL)
@given(data=st.data(), factor=st.floats(0.01, 100))
def test_positive_scale_equivariance(name: str, data: st.DataObject, factor: float) -> None:
    """With tau scaled along (it is a distance). The geometric median's smoothing radius nu is
    an absolute distance, so near a data point it is equivariant only up to about nu."""
    sample = data.draw(samples(name, min_d=2 if name in FLAT_IN_1D else 1))
    scaled = Sample(x=sample.x * factor, own=sample.own * factor, weights=sample.weights, f=sample.f)
    out = aggregate(name, sample.x, **params_for(name, sample))
    again = aggregate(name, scaled.x, **params_for(name, scaled))
    atol = 1e-8 * factor * max(_scale_of(sample), 1.0)
    if name == "geometric-median":
        atol += 10 * 1e-6 * max(factor, 1.0)  # 10 nu
    torch.testing.assert_close(again, out * factor, rtol=1e-6, atol=atol)


def test_gossip_rules_are_listed() -> None:
    assert set(GOSSIP_RULES) == {
        "monna",
        "clipped-gossip",
        "adaptive-clipped-gossip",
        "cs-plus",
        "gts",
        "rfa-gossip",
    }


PRE = {"nnm": {}, "arc": {}, "clipping": {"tau": 0.5}, "bucketing": {"s": 2, "seed": 1}}


@pytest.mark.parametrize("name", sorted(PRE))
@given(data=st.data())
def test_pre_aggregators_shape_fixed_point_and_equivariance(name: str, data: st.DataObject) -> None:
    sample = data.draw(samples("nnm"))
    params = {**({"f": sample.f} if name in ("nnm", "arc") else {}), **PRE[name]}
    x = sample.x
    out = pre_aggregate(x, [name], **params)
    n = x.shape[0]
    assert out.shape == ((n + 1) // 2 if name == "bucketing" else n, x.shape[1])
    same = x[0].expand_as(x).clone()
    expected = x[0] * min(1.0, 0.5 / float(torch.linalg.vector_norm(x[0]))) if name == "clipping" else x[0]
    _close(pre_aggregate(same, [name], **params), expected.expand_as(out), _scale_of(sample))
    if name != "bucketing":  # a seeded shuffle: rows go to other buckets when permuted
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 99))))
        _close(pre_aggregate(x[perm], [name], **params), out[perm], _scale_of(sample))
