"""Differential privacy for what a node sends: the Gaussian mechanism and its accounting.

Mechanism
    :func:`gaussian_mechanism` clips a vector to L2 norm ``C`` and adds ``N(0, sigma^2 C^2)`` to every
    coordinate, the noise drawn from the caller's ``torch.Generator``. Its guarantee is about the clipped
    vector: when a node sends ``gaussian_mechanism(update)`` each round, where ``update`` is what its data
    changed (its model minus the model it started the round from), every message is a Gaussian mechanism of
    sensitivity ``C`` with respect to adding or removing the node's whole contribution. Clipping the model
    itself bounds nothing useful, so callers clip and noise the *update*.

    Compression composes after the mechanism: encode the noised vector. A codec then only post-processes a
    private output (privacy is kept by any codec, error feedback included, since the residual is a
    function of noised vectors). Noising after compression would not be private: top-k's choice of indices
    depends on the raw data.

Accounting
    :class:`PrivacyAccountant` wraps dp-accounting's RDP accountant (Google's maintained library; not a
    hand-written bound) and reports ``(epsilon, delta)`` after each round for a noise multiplier ``sigma``
    and a sampling rate ``q`` (``q < 1`` when each round's update comes from a Poisson-sampled fraction of
    the data, the amplification of DP-SGD; 1 otherwise). :func:`sigma_for` calibrates ``sigma`` for a
    target epsilon over a planned number of rounds with dp-accounting's own search (Brent's method).

    dp-accounting is an optional extra (``pip install 'phalanx[privacy]'``), imported on first use; without
    it every accounting call raises :class:`PrivacyUnavailable` with one line saying what to install.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

INSTALL_HINT = (
    "privacy accounting needs the optional extra: pip install 'phalanx[privacy]' (dp-accounting>=0.4)"
)


class PrivacyUnavailable(ImportError):
    """dp-accounting is not installed; the message says what to install."""


class PrivacyError(ValueError):
    """A privacy setting that cannot be used (one line naming it)."""


def _accounting() -> ModuleType:
    try:
        import dp_accounting
    except ImportError:
        raise PrivacyUnavailable(INSTALL_HINT) from None
    return dp_accounting


def _check_common(*, delta: float, sampling_rate: float) -> None:
    if not (math.isfinite(delta) and 0.0 < delta < 1.0):
        raise PrivacyError(f"delta must be in (0, 1), got {delta}")
    if not (math.isfinite(sampling_rate) and 0.0 < sampling_rate <= 1.0):
        raise PrivacyError(f"sampling rate must be in (0, 1], got {sampling_rate}")


# ------------------------------------------------------------------------------------------ mechanism


def clip(vector: torch.Tensor, max_norm: float) -> torch.Tensor:
    """``vector`` scaled down to L2 norm ``max_norm`` when longer; unchanged (a copy) otherwise."""
    if not (math.isfinite(max_norm) and max_norm > 0.0):
        raise PrivacyError(f"clip norm must be > 0, got {max_norm}")
    norm = float(torch.linalg.vector_norm(vector))
    if not math.isfinite(norm):
        raise ValueError("cannot clip a vector with NaN or infinite values")
    return vector * (max_norm / norm) if norm > max_norm else vector.clone()


def gaussian_mechanism(
    vector: torch.Tensor, *, clip_norm: float, noise_multiplier: float, generator: torch.Generator
) -> torch.Tensor:
    """``clip(vector, C) + N(0, (noise_multiplier * C)^2 I)``, the noise from ``generator``."""
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0.0):
        raise PrivacyError(f"noise multiplier must be >= 0, got {noise_multiplier}")
    clipped = clip(vector, clip_norm)
    noise = torch.randn(clipped.shape, generator=generator, dtype=clipped.dtype, device=clipped.device)
    return clipped + noise * (noise_multiplier * clip_norm)


# ----------------------------------------------------------------------------------------- accounting


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivacySpent:
    """The guarantee after ``rounds`` releases: ``(epsilon, delta)``-DP (epsilon is ``inf`` for sigma 0)."""

    epsilon: float
    delta: float
    rounds: int


def _event(dp: Any, noise_multiplier: float, sampling_rate: float) -> Any:
    gaussian = dp.GaussianDpEvent(noise_multiplier)
    return gaussian if sampling_rate >= 1.0 else dp.PoissonSampledDpEvent(sampling_rate, gaussian)


class PrivacyAccountant:
    """Tracks one node's privacy loss over rounds with dp-accounting's RDP accountant.

    Each :meth:`step` composes one more Gaussian release (Poisson-subsampled when ``sampling_rate < 1``)
    and returns the spent ``(epsilon, delta)``. ``rounds`` rebuilds an accountant after a restart (RDP
    composition of n identical events is one call, so this costs nothing).
    """

    def __init__(
        self, *, noise_multiplier: float, delta: float, sampling_rate: float = 1.0, rounds: int = 0
    ) -> None:
        if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0.0):
            raise PrivacyError(f"noise multiplier must be >= 0, got {noise_multiplier}")
        _check_common(delta=delta, sampling_rate=sampling_rate)
        if rounds < 0:
            raise PrivacyError(f"rounds must be >= 0, got {rounds}")
        dp = _accounting()
        from dp_accounting.rdp import rdp_privacy_accountant

        self.noise_multiplier = noise_multiplier
        self.delta = delta
        self.sampling_rate = sampling_rate
        self._accountant = rdp_privacy_accountant.RdpAccountant()
        self._event = _event(dp, noise_multiplier, sampling_rate)
        self._rounds = 0
        if rounds:
            self.step(rounds)

    @property
    def rounds(self) -> int:
        return self._rounds

    def step(self, rounds: int = 1) -> PrivacySpent:
        """Account for ``rounds`` more releases and return what has been spent in all."""
        if rounds < 1:
            raise PrivacyError(f"rounds must be >= 1, got {rounds}")
        self._accountant.compose(self._event, rounds)
        self._rounds += rounds
        return self.spent()

    def spent(self) -> PrivacySpent:
        epsilon = 0.0 if self._rounds == 0 else float(self._accountant.get_epsilon(self.delta))
        return PrivacySpent(epsilon=epsilon, delta=self.delta, rounds=self._rounds)


def epsilon_for(noise_multiplier: float, *, rounds: int, delta: float, sampling_rate: float = 1.0) -> float:
    """The epsilon spent after ``rounds`` releases at this noise multiplier."""
    return (
        PrivacyAccountant(
            noise_multiplier=noise_multiplier, delta=delta, sampling_rate=sampling_rate, rounds=rounds
        )
        .spent()
        .epsilon
    )


def sigma_for(
    epsilon: float, *, delta: float, rounds: int, sampling_rate: float = 1.0, tol: float = 1e-4
) -> float:
    """The smallest noise multiplier (within ``tol``) whose ``rounds`` releases stay within ``epsilon``.

    dp-accounting's :func:`calibrate_dp_mechanism` does the search (Brent's method on the RDP epsilon,
    which decreases in sigma), bracketing from ``[0.05, 1]`` upwards.
    """
    if not (math.isfinite(epsilon) and epsilon > 0.0):
        raise PrivacyError(f"target epsilon must be > 0, got {epsilon}")
    _check_common(delta=delta, sampling_rate=sampling_rate)
    if rounds < 1:
        raise PrivacyError(f"rounds must be >= 1, got {rounds}")
    dp = _accounting()
    from dp_accounting.rdp import rdp_privacy_accountant

    lower = 0.05
    if epsilon_for(lower, rounds=rounds, delta=delta, sampling_rate=sampling_rate) <= epsilon:
        return lower  # the target is so loose that the search's floor already meets it
    sigma = dp.calibrate_dp_mechanism(
        rdp_privacy_accountant.RdpAccountant,
        lambda s: dp.SelfComposedDpEvent(_event(dp, s, sampling_rate), rounds),
        epsilon,
        delta,
        dp.LowerEndpointAndGuess(lower, 1.0),
        tol=tol,
    )
    return float(sigma)
