"""Attack vectors: what a Byzantine node sends, computed from the honest vectors it can see.

Every attack is ``attack(honest, *, <params>) -> Tensor`` taking the (h, d) honest vectors
visible to the attacker and returning one (d,) malicious vector, on honest's device and dtype.
Colluding attackers send the same vector; draw one per attacker for the Gaussian attack (with
different seeds). ``mu`` and ``sigma`` below are the coordinate-wise mean and sample standard
deviation (denominator h - 1; 0 for a single row) of the honest rows.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from statistics import NormalDist
from typing import Any

import torch
from torch import Tensor

from .validation import AggregationError, check_own, check_updates, check_weights

__all__ = [
    "alie",
    "alie_z",
    "class_poison",
    "dissensus",
    "gaussian",
    "inf",
    "ipm",
    "large_value",
    "mimic",
    "model_replacement",
    "nan",
    "optimal_alie",
    "optimal_ipm",
    "sign_flip",
]

Rule = Callable[[Tensor], Tensor]


def _honest_mean(name: str, honest: Tensor) -> Tensor:
    check_updates(name, honest)
    return honest.mean(dim=0)


def _sigma(honest: Tensor) -> Tensor:
    """Per-coordinate standard deviation of the honest rows (Bessel-corrected when h > 1), written
    out: ``Tensor.std(dim=0)`` measured 8.3 ms on a (3, 50,890) stack, this 0.4 ms."""
    h = honest.shape[0]
    centred = honest - honest.mean(dim=0)
    return (centred * centred).sum(dim=0).div_(h - 1 if h > 1 else 1).sqrt_()


def sign_flip(honest: Tensor) -> Tensor:
    """Sign flipping: ``-mu`` (Allen-Zhu, Ebrahimian, Li & Alistarh, 2021; the Byzantine node
    sends the opposite of what an honest node would)."""
    return -_honest_mean("sign-flip", honest)


def gaussian(honest: Tensor, *, sigma: float, mu: float = 0.0, seed: int = 0) -> Tensor:
    """Gaussian noise: a draw from N(mu, sigma^2 I) (Blanchard et al., 2017, NeurIPS).

    ``seed`` seeds a generator on honest's device, so a simulation replays exactly.
    """
    check_updates("gaussian", honest)
    if not isinstance(sigma, int | float) or isinstance(sigma, bool) or not sigma >= 0:
        raise AggregationError(f"gaussian: sigma must be a number >= 0, got {sigma!r}")
    gen = torch.Generator(device=honest.device).manual_seed(int(seed))
    noise = torch.randn(honest.shape[1], generator=gen, device=honest.device, dtype=honest.dtype)
    return noise * sigma + mu


def large_value(honest: Tensor, *, value: float = 1e30) -> Tensor:
    """Every coordinate set to ``value`` (finite but huge: overflows naive float32 norms)."""
    check_updates("large-value", honest)
    return torch.full((honest.shape[1],), value, dtype=honest.dtype, device=honest.device)


def inf(honest: Tensor) -> Tensor:
    """Every coordinate +inf: must be caught by :func:`finite_rows`, never reach a rule."""
    return large_value(honest, value=math.inf)


def nan(honest: Tensor) -> Tensor:
    """Every coordinate NaN: must be caught by :func:`finite_rows`, never reach a rule."""
    return large_value(honest, value=math.nan)


def alie_z(n: int, f: int) -> float:
    """ALIE's factor (Baruch, Baruch & Goldberg, 2019, "A little is enough", NeurIPS):
    ``s = floor(n / 2 + 1) - f`` supporters needed, ``z = Phi^{-1}((n - s) / n)``.

    n is the total number of nodes (honest and Byzantine), f the Byzantine ones; requires
    1 <= s <= n - 1, i.e. f <= floor(n / 2) and a positive majority threshold.
    """
    s = math.floor(n / 2 + 1) - f
    if not 0 < s < n:
        raise AggregationError(f"alie: the formula needs 0 < floor(n/2 + 1) - f < n, got n={n}, f={f}")
    return NormalDist().inv_cdf((n - s) / n)


def alie(honest: Tensor, *, z: float | None = None, n: int | None = None, f: int | None = None) -> Tensor:
    """A little is enough, ALIE (Baruch, Baruch & Goldberg, 2019, NeurIPS): ``mu + z sigma``.

    Args:
        honest: (h, d) honest vectors.
        z: the factor; when omitted it comes from the paper's formula :func:`alie_z`.
        n: total number of nodes for the formula; default h + f.
        f: number of Byzantine nodes for the formula.
    """
    check_updates("alie", honest)
    if z is None:
        if f is None:
            raise AggregationError("alie: give z, or f (and optionally n) for the paper's formula")
        z = alie_z(honest.shape[0] + f if n is None else n, f)
    return honest.mean(dim=0) + float(z) * _sigma(honest)


def ipm(honest: Tensor, *, epsilon: float = 0.1) -> Tensor:
    """Inner-product manipulation, IPM / "fall of empires" (Xie, Koyejo & Gupta, 2020, UAI):
    ``-epsilon mu``; small epsilon keeps it close enough to pass filters yet negates progress."""
    return -float(epsilon) * _honest_mean("ipm", honest)


def mimic(honest: Tensor, *, target: int = 0) -> Tensor:
    """Mimic (Karimireddy, He & Jaggi, 2022, ICLR): copy honest node ``target``, over-weighting
    its data to bias heterogeneous training."""
    h, _ = check_updates("mimic", honest)
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < h:
        raise AggregationError(f"mimic: target must be an index in [0, {h}), got {target!r}")
    return honest[target].clone()


def dissensus(
    honest: Tensor, *, own: Tensor, weights: Tensor, byzantine_weight: float, epsilon: float = 1.0
) -> Tensor:
    """Dissensus (He, Karimireddy & Jaggi, 2022, ClippedGossip paper): push the target node
    i away from its honest neighbours.

    ``x_i - epsilon sum_{j honest} W_ij (x_j - x_i) / sum_{b Byzantine} W_ib``: if all
    Byzantine neighbours send it, plain gossip moves x_i by (1 - epsilon) times its honest pull.

    Args:
        honest: (h, d) vectors of the target's honest neighbours.
        own: (d,) the target's own vector x_i.
        weights: (h,) the target's mixing weights W_ij for those honest neighbours.
        byzantine_weight: total weight sum_b W_ib the target gives its Byzantine neighbours (> 0).
        epsilon: attack strength.
    """
    h, _ = check_updates("dissensus", honest)
    check_own("dissensus", own, honest)
    w = check_weights("dissensus", weights, h, mixing=True)
    if not isinstance(byzantine_weight, int | float) or not byzantine_weight > 0:
        raise AggregationError(f"dissensus: byzantine_weight must be > 0, got {byzantine_weight!r}")
    pull = w.to(device=honest.device, dtype=honest.dtype) @ honest - own * float(w.sum())
    return own - pull * (float(epsilon) / float(byzantine_weight))


def model_replacement(honest: Tensor, *, target: Tensor, factor: float | None = None) -> Tensor:
    """Model replacement / scaling (Bagdasaryan, Veit, Hua, Estrin & Shmatikov, 2020, "How to
    backdoor federated learning", AISTATS): ``mu + factor (target - mu)``.

    With the default factor h + 1 the plain mean of the h honest vectors and this one is
    exactly ``target`` (the attacker's model, e.g. a backdoored one).
    """
    h, _ = check_updates("model-replacement", honest)
    check_own("model-replacement", target, honest, label="target")
    mu = honest.mean(dim=0)
    gamma = float(h + 1 if factor is None else factor)
    return mu + (target - mu) * gamma


def class_poison(
    honest: Tensor, *, target: int = 0, classes: int = 10, head_inputs: int = 0, scale: float = 1.0
) -> Tensor:
    """One-class poisoning aimed at per-class integrators (Bristle): the honest mean with the output layer's
    row ``target`` (its weights and its bias) replaced by ``-scale`` times itself.

    With ``scale = 1`` the poisoned row has the norm of the honest one, and the vector differs from the honest
    mean in that row alone, so it sits among honest models in distance and passes distance-based filters
    while class ``target`` is (almost) never predicted. The output layer is the tail of the vector: its
    ``(classes, inputs)`` weights row-major, then its ``classes`` biases; ``head_inputs = 0`` means the whole
    vector is that layer (head-only training), otherwise ``inputs = head_inputs``.
    """
    _, d = check_updates("class-poison", honest)
    if head_inputs < 0 or classes < 1 or not 0 <= target < classes:
        raise AggregationError(
            f"class-poison: need 0 <= target < classes and head_inputs >= 0, got {target}, {classes}"
        )
    inputs = head_inputs or d // classes - 1
    size = classes * (inputs + 1)
    if inputs < 1 or size > d or (head_inputs == 0 and d % classes):
        raise AggregationError(
            f"class-poison: a vector of {d} values holds no output layer of {classes} classes"
        )
    out = honest.mean(dim=0)
    start = d - size
    row = slice(start + target * inputs, start + (target + 1) * inputs)
    bias = start + classes * inputs + target
    out[row] *= -float(scale)
    out[bias] *= -float(scale)
    return out


def _resolve(rule: str | Rule, rule_params: Mapping[str, Any] | None) -> Rule:
    if callable(rule):
        if rule_params:
            raise AggregationError("optimal attack: rule_params only apply to a rule given by name")
        return rule
    from .registry import aggregate  # late import: the registry imports this module

    params = dict(rule_params or {})
    return lambda x: aggregate(rule, x, **params)


def _line_search(
    honest: Tensor, make: Callable[[float], Tensor], rule: Rule, f: int, grid: Sequence[float], steps: int
) -> Tensor:
    """Factor maximising ||rule([honest; f copies of make(factor)]) - mu||: the best point of
    ``grid``, refined by golden-section search between its grid neighbours. Only improvements
    are kept, so the result is at least as good as every grid point."""
    mu = honest.mean(dim=0)

    def damage(factor: float) -> float:
        vec = make(factor)
        out = rule(torch.cat((honest, vec.expand(f, -1))))
        return float(torch.linalg.vector_norm((out - mu).to(torch.float64)))

    points = sorted(set(grid))
    scores = [damage(p) for p in points]
    best = max(range(len(points)), key=scores.__getitem__)
    best_factor, best_score = points[best], scores[best]
    lo, hi = points[max(best - 1, 0)], points[min(best + 1, len(points) - 1)]
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    for _ in range(steps if hi > lo else 0):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        score_a, score_b = damage(a), damage(b)
        for factor, score in ((a, score_a), (b, score_b)):
            if score > best_score:
                best_factor, best_score = factor, score
        if score_a >= score_b:
            hi = b
        else:
            lo = a
    return make(best_factor)


def _check_copies(name: str, f: int) -> None:
    if isinstance(f, bool) or not isinstance(f, int) or f < 1:
        raise AggregationError(f"{name}: f (Byzantine copies sent) must be an integer >= 1, got {f!r}")


def optimal_alie(
    honest: Tensor,
    *,
    rule: str | Rule,
    f: int,
    rule_params: Mapping[str, Any] | None = None,
    n: int | None = None,
    factors: Sequence[float] | None = None,
    steps: int = 12,
) -> Tensor:
    """ALIE with the factor z chosen by line search (as in Allouah et al., 2023, AISTATS):
    maximise ``||rule([honest; f copies of mu + z sigma]) - mu||`` over z.

    The grid (default -10..10 in steps of 0.5) always contains the paper's z for (n, f), so the
    result is never worse for the attacker than :func:`alie` with that z.

    Args:
        honest: (h, d) honest vectors.
        rule: the rule under attack: a registry name (with ``rule_params``) or a callable.
        f: number of copies the Byzantine nodes send (>= 1).
        rule_params: parameters of a rule given by name, e.g. ``{"f": 2}``.
        n: total number of nodes for the paper's z; default h + f.
        factors: grid of z values to try.
        steps: golden-section refinement steps around the best grid point.
    Cost: (len(grid) + 2 steps) evaluations of the rule on h + f rows.
    """
    h, _ = check_updates("optimal-alie", honest)
    _check_copies("optimal-alie", f)
    apply = _resolve(rule, rule_params)
    mu, sigma = honest.mean(dim=0), _sigma(honest)
    grid = [i / 2 for i in range(-20, 21)] if factors is None else list(factors)
    # When the formula does not apply (Byzantine majority) the grid alone is searched.
    with contextlib.suppress(AggregationError):
        grid.append(alie_z(h + f if n is None else n, f))
    return _line_search(honest, lambda z: mu + z * sigma, apply, f, grid, steps)


def optimal_ipm(
    honest: Tensor,
    *,
    rule: str | Rule,
    f: int,
    rule_params: Mapping[str, Any] | None = None,
    epsilon: float = 0.1,
    factors: Sequence[float] | None = None,
    steps: int = 12,
) -> Tensor:
    """IPM with epsilon chosen by line search (as in Allouah et al., 2023, AISTATS): maximise
    ``||rule([honest; f copies of -epsilon mu]) - mu||`` over epsilon.

    The grid (default 0..20 in steps of 0.5) always contains ``epsilon``, so the result is never
    worse for the attacker than :func:`ipm` with that epsilon. Parameters as in
    :func:`optimal_alie`.
    """
    check_updates("optimal-ipm", honest)
    _check_copies("optimal-ipm", f)
    apply = _resolve(rule, rule_params)
    mu = honest.mean(dim=0)
    grid = [i / 2 for i in range(0, 41)] if factors is None else list(factors)
    grid.append(float(epsilon))
    return _line_search(honest, lambda eps: -eps * mu, apply, f, grid, steps)
