"""Bounded influence: with at most f rows replaced by arbitrary vectors (norm up to 1e30), the
output stays where the honest rows put it."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from phalanx.aggregation import GOSSIP_RULES, aggregate, max_f

from .conftest import random_rows, random_weights


@st.composite
def attacked(
    draw: st.DrawFn, name: str, *, far: bool, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor, list[int], torch.Tensor, torch.Tensor, int]:
    """(rows, honest rows, Byzantine indices, own, weights, f) with f = the largest tolerated
    (at least 1) and the Byzantine rows at norm 10^e: e in [4, 30] (far) or [-3, 30] (any)."""
    n = draw(st.integers(3, 11))
    while max_f(name, n) < 1:
        n += 1
    f = draw(st.integers(1, max_f(name, n)))
    if name in GOSSIP_RULES:
        f = min(f, (n - 1) // 2)  # an honest majority among the neighbours for the box bounds
    d = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    x = random_rows(seed, n, d).to(dtype)
    own = random_rows(seed + 3, 1, d)[0].to(dtype)
    bad = sorted(draw(st.sets(st.integers(0, n - 1), min_size=f, max_size=f)))
    for i in bad:
        exponent = draw(st.floats(4.0 if far else -3.0, 30.0))
        direction = random_rows(seed + 11 + i, 1, d)[0]
        direction = direction / torch.linalg.vector_norm(direction)
        x[i] = (direction * 10.0**exponent).to(dtype)
    honest = x[[i for i in range(n) if i not in bad]]
    return x, honest, bad, own, random_weights(seed, n).to(dtype), f


def _in_box(out: torch.Tensor, rows: torch.Tensor, slack: float = 1e-9) -> None:
    lo, hi = rows.min(dim=0).values.double(), rows.max(dim=0).values.double()
    tol = slack * (1.0 + float((hi - lo).max()) + float(rows.abs().max()))
    o = out.double()
    assert bool(torch.isfinite(o).all())
    assert bool((o >= lo - tol).all() and (o <= hi + tol).all()), (o, lo, hi)


@pytest.mark.parametrize("name", ["median", "trimmed-mean"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@given(data=st.data())
def test_coordinatewise_stays_in_honest_range(name: str, dtype: torch.dtype, data: st.DataObject) -> None:
    x, honest, _, _, _, f = data.draw(attacked(name, far=False, dtype=dtype))
    params = {"f": f} if name == "trimmed-mean" else {}
    _in_box(aggregate(name, x, **params), honest, 1e-6 if dtype == torch.float32 else 1e-9)


FAR_BOX = ["meamed", "bulyan", "multi-krum", "mda", "smea", "caf", "nnm-then-mean"]


@pytest.mark.parametrize("name", FAR_BOX)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@given(data=st.data())
def test_far_outliers_are_ignored(name: str, dtype: torch.dtype, data: st.DataObject) -> None:
    rule = "trimmed-mean" if name == "nnm-then-mean" else name
    x, honest, _, _, _, f = data.draw(attacked(rule, far=True, dtype=dtype))
    if name == "nnm-then-mean":
        out = aggregate("trimmed-mean", x, f=f, pre=["nnm"])
    else:
        out = aggregate(name, x, f=f)
    _in_box(out, honest, 1e-5 if dtype == torch.float32 else 1e-9)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@given(data=st.data())
def test_krum_returns_an_honest_row(dtype: torch.dtype, data: st.DataObject) -> None:
    x, honest, _, _, _, f = data.draw(attacked("krum", far=True, dtype=dtype))
    out = aggregate("krum", x, f=f)
    assert any(torch.equal(out, row) for row in honest)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@given(data=st.data())
def test_geometric_median_stays_near_the_honest_rows(dtype: torch.dtype, data: st.DataObject) -> None:
    """Optimality gives ||z - c|| <= 2 (n - f) r / (n - 2f) for any c with every honest row
    within r of c; here c is the honest mean."""
    x, honest, _, _, _, f = data.draw(attacked("geometric-median", far=False, dtype=dtype))
    n = x.shape[0]
    center = honest.double().mean(dim=0)
    radius = float(torch.linalg.vector_norm(honest.double() - center, dim=1).max())
    out = aggregate("geometric-median", x).double()
    bound = 2 * (n - f) * radius / (n - 2 * f)
    assert float(torch.linalg.vector_norm(out - center)) <= bound * 1.01 + 1e-4


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@given(data=st.data(), iterations=st.integers(1, 5))
def test_centered_clipping_moves_at_most_tau_per_step(
    dtype: torch.dtype, data: st.DataObject, iterations: int
) -> None:
    x, honest, _, _, _, _ = data.draw(attacked("centered-clipping", far=False, dtype=dtype))
    start = honest.mean(dim=0)
    out = aggregate("centered-clipping", x, tau=1.0, iterations=iterations, start=start)
    assert float(torch.linalg.vector_norm((out - start).double())) <= iterations * 1.0 * (1 + 1e-5)


@pytest.mark.parametrize("name", ["monna", "gts", "cs-plus", "adaptive-clipped-gossip", "clipped-gossip"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@given(data=st.data())
def test_gossip_rules_stay_near_own_and_honest(name: str, dtype: torch.dtype, data: st.DataObject) -> None:
    """Far Byzantine neighbours: MoNNA and GTS stay in the box of own and the honest rows; the
    clipping rules move own by at most H + W_B tau, where H = sum over honest j of W_ij r_j,
    W_B the Byzantine weight and tau the radius (fixed; the (2f+1)-th largest distance, at most
    the largest honest one, for CS+; at most sqrt(sum_honest W_ij r_j^2 / delta) adaptively)."""
    x, honest, bad, own, weights, f = data.draw(attacked(name, far=True, dtype=dtype))
    good = [i for i in range(x.shape[0]) if i not in bad]
    r = torch.linalg.vector_norm((honest - own).double(), dim=1)
    w = weights.double()
    params = {"own": own}
    params.update({"weights": weights} if name != "monna" else {})
    params.update({"tau": float(r.max())} if name == "clipped-gossip" else {"f": f})
    out = aggregate(name, x, **params)
    assert bool(torch.isfinite(out).all())
    if name in ("monna", "gts"):
        _in_box(out, torch.cat((honest, own[None])), 1e-5)
        return
    pull = float((w[good] * r).sum())
    byzantine_weight = float(w[bad].sum())
    if name == "adaptive-clipped-gossip":
        delta = float(torch.sort(w, descending=True).values[:f].sum())
        tau = float(((w[good] * r.square()).sum() / delta).sqrt())
    else:
        tau = float(r.max())
    moved = float(torch.linalg.vector_norm((out - own).double()))
    assert moved <= (pull + byzantine_weight * tau) * (1 + 1e-5) + 1e-9


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@given(data=st.data(), iterations=st.integers(1, 3))
def test_rfa_gossip_steps_are_bounded_by_the_honest_radius(
    dtype: torch.dtype, data: st.DataObject, iterations: int
) -> None:
    """Far Byzantine neighbours (norm up to 1e30): each step moves z by at most c max(nu, R_t),
    c = (n + 1) / (n + 1 - f), R_t the largest distance from z to own and the honest rows, so
    ||out - own|| <= M_0 ((1 + c)^T - 1) with M_0 = max(nu, R_0): a bound the attackers cannot move."""
    x, honest, _, own, _, f = data.draw(attacked("rfa-gossip", far=True, dtype=dtype))
    n = x.shape[0]
    nu = 0.1
    out = aggregate("rfa-gossip", x, own=own, nu=nu, iterations=iterations)
    assert bool(torch.isfinite(out).all())
    r0 = float(torch.linalg.vector_norm((honest - own).double(), dim=1).max())
    c = (n + 1) / (n + 1 - f)
    bound = max(nu, r0) * ((1 + c) ** iterations - 1)
    moved = float(torch.linalg.vector_norm((out - own).double()))
    assert moved <= bound * (1 + 1e-5) + 1e-6
