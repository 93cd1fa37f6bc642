"""Differential privacy: clipping, the noise's scale (statistical), accounting monotone in rounds, calibration."""

from __future__ import annotations

import importlib.util
import itertools
import math
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from phalanx.gossip import privacy
from phalanx.gossip.privacy import (
    PrivacyAccountant,
    PrivacyError,
    PrivacyUnavailable,
    clip,
    epsilon_for,
    gaussian_mechanism,
    sigma_for,
)

# dp-accounting is the optional extra `privacy` (also in `test`): without it the accounting tests are skipped.
needs_accounting = pytest.mark.skipif(
    importlib.util.find_spec("dp_accounting") is None, reason="dp-accounting absent"
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@given(seed=st.integers(0, 2**31), scale=st.sampled_from([1e-3, 0.5, 1.0, 7.0, 1e3]), c=st.floats(0.01, 100))
def test_clip_bounds_the_norm_and_keeps_the_direction(seed: int, scale: float, c: float) -> None:
    x = torch.randn(50, generator=gen(seed)) * scale
    y = clip(x, c)
    norm = float(x.norm())
    assert float(y.norm()) <= c * (1 + 1e-5)
    if norm <= c:
        assert torch.equal(y, x)
    else:
        assert torch.allclose(y * (norm / c), x, rtol=1e-4, atol=1e-6)


def test_clip_rejects_bad_norms_and_non_finite_vectors() -> None:
    with pytest.raises(PrivacyError):
        clip(torch.ones(3), 0.0)
    with pytest.raises(ValueError):
        clip(torch.tensor([1.0, float("nan")]), 1.0)


def test_noise_has_the_stated_scale() -> None:
    # 200k noise draws: the sample std is within 1% of sigma * C (its standard error is ~0.16%).
    c, sigma = 2.0, 1.5
    x = torch.zeros(200_000)
    noised = gaussian_mechanism(x, clip_norm=c, noise_multiplier=sigma, generator=gen(0))
    assert abs(float(noised.std()) / (sigma * c) - 1) < 0.01
    assert abs(float(noised.mean())) < 5 * sigma * c / math.sqrt(x.numel())


def test_mechanism_clips_before_adding_noise() -> None:
    x = torch.full((10_000,), 5.0)  # norm 500
    out = gaussian_mechanism(x, clip_norm=1.0, noise_multiplier=0.0, generator=gen(1))
    assert abs(float(out.norm()) - 1.0) < 1e-4
    noised = gaussian_mechanism(x, clip_norm=1.0, noise_multiplier=0.5, generator=gen(1))
    assert abs(float((noised - out).std()) - 0.5) < 0.02  # noise scale follows C, not the raw norm


def test_mechanism_is_reproducible_from_the_generator() -> None:
    x = torch.randn(100, generator=gen(2))
    a = gaussian_mechanism(x, clip_norm=1.0, noise_multiplier=1.0, generator=gen(3))
    b = gaussian_mechanism(x, clip_norm=1.0, noise_multiplier=1.0, generator=gen(3))
    assert torch.equal(a, b)


@needs_accounting
@pytest.mark.parametrize("q", [1.0, 0.1])
def test_epsilon_grows_with_rounds_and_matches_the_batch_answer(q: float) -> None:
    acc = PrivacyAccountant(noise_multiplier=1.1, delta=1e-5, sampling_rate=q)
    assert acc.spent().epsilon == 0.0
    eps = [acc.step().epsilon for _ in range(30)]
    assert all(b > a for a, b in itertools.pairwise(eps))
    assert acc.rounds == 30
    assert eps[-1] == pytest.approx(epsilon_for(1.1, rounds=30, delta=1e-5, sampling_rate=q), rel=1e-9)
    # a restarted accountant given the rounds so far reports the same
    assert PrivacyAccountant(
        noise_multiplier=1.1, delta=1e-5, sampling_rate=q, rounds=30
    ).spent().epsilon == pytest.approx(eps[-1])


@needs_accounting
def test_more_noise_or_less_sampling_spends_less() -> None:
    base = epsilon_for(1.0, rounds=50, delta=1e-5)
    assert epsilon_for(2.0, rounds=50, delta=1e-5) < base
    assert epsilon_for(1.0, rounds=50, delta=1e-5, sampling_rate=0.1) < base
    assert math.isinf(epsilon_for(0.0, rounds=1, delta=1e-5))


@needs_accounting
def test_one_gaussian_release_matches_the_classical_bound() -> None:
    # For one release, sigma = sqrt(2 ln(1.25 / delta)) / epsilon gives (epsilon, delta)-DP for epsilon < 1
    # (Dwork and Roth, Thm 3.22); RDP accounting is tighter, so it reports at most that epsilon.
    delta, epsilon = 1e-5, 0.5
    sigma = math.sqrt(2 * math.log(1.25 / delta)) / epsilon
    assert epsilon_for(sigma, rounds=1, delta=delta) <= epsilon


@needs_accounting
@pytest.mark.parametrize(("epsilon", "rounds", "q"), [(1.0, 100, 1.0), (3.0, 100, 1.0), (8.0, 500, 0.05)])
def test_sigma_for_round_trips(epsilon: float, rounds: int, q: float) -> None:
    sigma = sigma_for(epsilon, delta=1e-5, rounds=rounds, sampling_rate=q)
    assert epsilon_for(sigma, rounds=rounds, delta=1e-5, sampling_rate=q) <= epsilon * (1 + 1e-6)
    assert (
        epsilon_for(sigma * 0.99, rounds=rounds, delta=1e-5, sampling_rate=q) > epsilon
    )  # and it is the smallest


@needs_accounting
def test_sigma_for_a_loose_target_is_the_floor() -> None:
    assert sigma_for(1e6, delta=1e-5, rounds=1) == 0.05


@pytest.mark.parametrize(
    "kwargs",
    [
        {"epsilon": 0.0},
        {"epsilon": float("inf")},
        {"delta": 0.0},
        {"delta": 1.0},
        {"rounds": 0},
        {"sampling_rate": 0.0},
        {"sampling_rate": 1.5},
    ],
)
def test_bad_privacy_settings_raise_one_line(kwargs: dict) -> None:
    args = {"epsilon": 1.0, "delta": 1e-5, "rounds": 10, "sampling_rate": 1.0, **kwargs}
    eps = args.pop("epsilon")
    with pytest.raises(PrivacyError) as info:
        sigma_for(eps, **args)
    assert "\n" not in str(info.value)


def test_missing_extra_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dp_accounting", None)  # makes `import dp_accounting` raise ImportError
    with pytest.raises(PrivacyUnavailable) as info:
        PrivacyAccountant(noise_multiplier=1.0, delta=1e-5)
    assert str(info.value) == privacy.INSTALL_HINT and "phalanx[privacy]" in str(info.value)
    # the mechanism itself needs no extra
    gaussian_mechanism(torch.ones(3), clip_norm=1.0, noise_multiplier=1.0, generator=gen(0))
