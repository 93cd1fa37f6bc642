"""Attack vectors: hand-computed examples, and optimal variants never weaker than fixed ones."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from phalanx.aggregation import ATTACKS, AggregationError, aggregate, attack
from phalanx.aggregation.attacks import alie_z

from .conftest import random_rows

HONEST = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]], dtype=torch.float64)


def test_alie_z_follows_the_paper() -> None:
    # n = 50, f = 24: s = floor(26) - 24 = 2, z = Phi^-1(48 / 50) ~ 1.75 (the paper's example).
    assert math.isclose(alie_z(50, 24), NormalDist().inv_cdf(0.96))
    assert math.isclose(alie_z(50, 24), 1.7507, abs_tol=1e-4)
    # n = 10, f = 2: s = 6 - 2 = 4, z = Phi^-1(0.6).
    assert math.isclose(alie_z(10, 2), 0.2533471, abs_tol=1e-6)
    with pytest.raises(AggregationError, match="alie"):
        alie_z(10, 6)


def test_alie_hand_computed() -> None:
    # mu = (4, 5, 6); the sample standard deviation of (1, 4, 7) is 3.
    torch.testing.assert_close(
        attack("alie", HONEST, z=1.5), torch.tensor([8.5, 9.5, 10.5], dtype=torch.float64)
    )
    z = alie_z(3 + 2, 2)
    torch.testing.assert_close(
        attack("alie", HONEST, f=2), torch.tensor([4.0, 5.0, 6.0], dtype=torch.float64) + 3 * z
    )
    torch.testing.assert_close(attack("alie", HONEST, f=2, n=10), HONEST.mean(0) + 3 * alie_z(10, 2))


def test_ipm_sign_flip_mimic_hand_computed() -> None:
    torch.testing.assert_close(
        attack("ipm", HONEST, epsilon=0.5), torch.tensor([-2.0, -2.5, -3.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        attack("sign-flip", HONEST), torch.tensor([-4.0, -5.0, -6.0], dtype=torch.float64)
    )
    torch.testing.assert_close(attack("mimic", HONEST, target=2), HONEST[2])


def test_dissensus_hand_computed() -> None:
    own = torch.zeros(2, dtype=torch.float64)
    honest = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    w = torch.tensor([0.25, 0.25], dtype=torch.float64)
    # pull = 0.25 (1, 0) + 0.25 (0, 2) = (0.25, 0.5); sent = own - 1.0 * pull / 0.5.
    out = attack("dissensus", honest, own=own, weights=w, byzantine_weight=0.5, epsilon=1.0)
    torch.testing.assert_close(out, torch.tensor([-0.5, -1.0], dtype=torch.float64))


@given(seed=st.integers(0, 2**31 - 1), h=st.integers(1, 6), eps=st.floats(0.0, 3.0))
def test_dissensus_scales_the_honest_pull_by_one_minus_epsilon(seed: int, h: int, eps: float) -> None:
    """Plain gossip at the target with every Byzantine neighbour sending the dissensus vector."""
    own = random_rows(seed, 1, 3)[0]
    honest = random_rows(seed + 1, h, 3)
    w = torch.full((h,), 0.5 / h, dtype=torch.float64)
    byzantine = 0.3
    sent = attack("dissensus", honest, own=own, weights=w, byzantine_weight=byzantine, epsilon=eps)
    pull = (w[:, None] * (honest - own)).sum(0)
    mixed = own + pull + byzantine * (sent - own)
    torch.testing.assert_close(mixed, own + (1 - eps) * pull)


def test_model_replacement_makes_the_mean_the_target() -> None:
    target = torch.tensor([10.0, -10.0, 0.5], dtype=torch.float64)
    sent = attack("model-replacement", HONEST, target=target)
    torch.testing.assert_close(torch.cat((HONEST, sent[None])).mean(0), target)
    torch.testing.assert_close(
        attack("model-replacement", HONEST, target=target, factor=2.0),
        HONEST.mean(0) + 2 * (target - HONEST.mean(0)),
    )


def test_value_attacks() -> None:
    assert bool((attack("large-value", HONEST) == 1e30).all())
    assert bool(torch.isinf(attack("inf", HONEST)).all())
    assert bool(torch.isnan(attack("nan", HONEST)).all())
    a = attack("gaussian", HONEST, sigma=2.0, seed=4)
    torch.testing.assert_close(a, attack("gaussian", HONEST, sigma=2.0, seed=4))
    assert not torch.equal(a, attack("gaussian", HONEST, sigma=2.0, seed=5))
    big = attack("gaussian", random_rows(0, 2, 20000), sigma=2.0, mu=1.0)
    assert abs(float(big.mean()) - 1.0) < 0.1 and abs(float(big.std()) - 2.0) < 0.1


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_keeps_dtype_and_shape(name: str) -> None:
    honest = random_rows(1, 5, 4).float()
    params: dict[str, object] = {
        "gaussian": {"sigma": 1.0},
        "alie": {"f": 2},
        "optimal-alie": {"rule": "median", "f": 2},
        "optimal-ipm": {"rule": "median", "f": 2},
        "dissensus": {"own": honest[0], "weights": torch.full((5,), 0.1), "byzantine_weight": 0.2},
        "model-replacement": {"target": honest[1]},
        "class-poison": {"classes": 2},
    }.get(name, {})
    out = attack(name, honest, **params)
    assert out.shape == (4,) and out.dtype == torch.float32


def _damage(rule: str, params: dict[str, object], honest: torch.Tensor, vec: torch.Tensor, f: int) -> float:
    out = aggregate(rule, torch.cat((honest, vec.expand(f, -1))), **params)
    return float(torch.linalg.vector_norm(out - honest.mean(0)))


RULES_UNDER_ATTACK = [
    ("median", {}),
    ("trimmed-mean", {"f": 2}),
    ("krum", {"f": 2}),
    ("geometric-median", {}),
    ("mean", {}),
]


@pytest.mark.parametrize(("rule", "params"), RULES_UNDER_ATTACK)
@given(seed=st.integers(0, 2**31 - 1), h=st.integers(5, 8))
def test_optimal_alie_never_worse_than_alie(rule: str, params: dict[str, object], seed: int, h: int) -> None:
    honest = random_rows(seed, h, 4)
    f = 2
    fixed = attack("alie", honest, f=f)
    best = attack("optimal-alie", honest, rule=rule, f=f, rule_params=params, steps=4)
    assert _damage(rule, params, honest, best, f) >= _damage(rule, params, honest, fixed, f) - 1e-12


@pytest.mark.parametrize(("rule", "params"), RULES_UNDER_ATTACK)
@given(seed=st.integers(0, 2**31 - 1), h=st.integers(5, 8), eps=st.floats(0.0, 5.0))
def test_optimal_ipm_never_worse_than_ipm(
    rule: str, params: dict[str, object], seed: int, h: int, eps: float
) -> None:
    honest = random_rows(seed, h, 4)
    f = 2
    fixed = attack("ipm", honest, epsilon=eps)
    best = attack("optimal-ipm", honest, rule=rule, f=f, rule_params=params, epsilon=eps, steps=4)
    assert _damage(rule, params, honest, best, f) >= _damage(rule, params, honest, fixed, f) - 1e-12


def test_optimal_attack_takes_a_callable() -> None:
    honest = random_rows(2, 6, 3)
    best = attack("optimal-ipm", honest, rule=lambda x: x.median(dim=0).values, f=2, steps=2)
    assert best.shape == (3,)
    with pytest.raises(AggregationError, match="rule_params"):
        attack("optimal-ipm", honest, rule=lambda x: x[0], f=2, rule_params={"f": 1})


def test_attack_entry_point_is_strict() -> None:
    with pytest.raises(AggregationError, match="unknown attack"):
        attack("nope", HONEST)
    with pytest.raises(AggregationError, match="epsilon2"):
        attack("ipm", HONEST, epsilon2=1.0)
    with pytest.raises(AggregationError, match="missing parameter"):
        attack("gaussian", HONEST)
    with pytest.raises(AggregationError, match="alie: give z"):
        attack("alie", HONEST)
    with pytest.raises(AggregationError, match="target"):
        attack("mimic", HONEST, target=3)
    with pytest.raises(AggregationError, match="byzantine_weight"):
        attack(
            "dissensus",
            HONEST,
            own=HONEST[0],
            weights=torch.full((3,), 0.1, dtype=torch.float64),
            byzantine_weight=0,
        )


def test_alie_sigma_is_the_bessel_corrected_std() -> None:
    from phalanx.aggregation.attacks import _sigma

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 40, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(_sigma(x), x.std(dim=0, correction=1))
    torch.testing.assert_close(_sigma(x[:1]), torch.zeros(40, dtype=torch.float64))
