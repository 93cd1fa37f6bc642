"""Names -> functions, and the one entry point used by configuration and the command line."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor

from . import attacks, clipping, coordinatewise, distance_based, geometric, gossip_rules, spectral
from .validation import AggregationError

__all__ = [
    "ATTACKS",
    "ATTACK_PARAMS",
    "GOSSIP_RULES",
    "PRE_AGGREGATORS",
    "PRE_PARAMS",
    "REQUIRED_PARAMS",
    "RULES",
    "RULE_PARAMS",
    "aggregate",
    "attack",
    "pre_aggregate",
]

Function = Callable[..., Tensor]
PreSpec = str | tuple[str, Mapping[str, Any]]

#: Robust rules: ``(n, d) -> (d,)``.
RULES: dict[str, Function] = {
    "mean": coordinatewise.mean,
    "median": coordinatewise.median,
    "trimmed-mean": coordinatewise.trimmed_mean,
    "meamed": coordinatewise.meamed,
    "krum": distance_based.krum,
    "multi-krum": distance_based.multi_krum,
    "bulyan": distance_based.bulyan,
    "mda": distance_based.mda,
    "monna": distance_based.monna,
    "caf": spectral.caf,
    "smea": spectral.smea,
    "geometric-median": geometric.geometric_median,
    "centered-clipping": geometric.centered_clipping,
    "rfa-gossip": geometric.rfa_gossip,
    "clipped-gossip": gossip_rules.clipped_gossip,
    "adaptive-clipped-gossip": gossip_rules.adaptive_clipped_gossip,
    "cs-plus": gossip_rules.cs_plus,
    "gts": gossip_rules.gts,
}

#: Rules whose rows are the neighbours only and that take the node's ``own`` vector.
GOSSIP_RULES: frozenset[str] = frozenset(
    {"monna", "clipped-gossip", "adaptive-clipped-gossip", "cs-plus", "gts", "rfa-gossip"}
)

#: Pre-aggregators: ``(n, d) -> (n', d)``.
PRE_AGGREGATORS: dict[str, Function] = {
    "nnm": clipping.nnm,
    "bucketing": clipping.bucketing,
    "clipping": clipping.static_clipping,
    "arc": clipping.arc,
}

#: Attacks: ``(h, d) honest -> (d,)`` malicious vector.
ATTACKS: dict[str, Function] = {
    "sign-flip": attacks.sign_flip,
    "gaussian": attacks.gaussian,
    "large-value": attacks.large_value,
    "inf": attacks.inf,
    "nan": attacks.nan,
    "alie": attacks.alie,
    "ipm": attacks.ipm,
    "optimal-alie": attacks.optimal_alie,
    "optimal-ipm": attacks.optimal_ipm,
    "mimic": attacks.mimic,
    "dissensus": attacks.dissensus,
    "model-replacement": attacks.model_replacement,
    "class-poison": attacks.class_poison,
}


def _keyword_params(fn: Function) -> frozenset[str]:
    return frozenset(p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY)


def _required_params(fn: Function) -> frozenset[str]:
    return frozenset(
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind is p.KEYWORD_ONLY and p.default is p.empty
    )


#: Keyword parameters each rule accepts (read from the signatures, so never out of date):
#: callers holding generic settings (f, tau, own, weights, seed, ...) filter with it.
RULE_PARAMS: dict[str, frozenset[str]] = {name: _keyword_params(fn) for name, fn in RULES.items()}
#: Keyword parameters each pre-aggregator accepts.
PRE_PARAMS: dict[str, frozenset[str]] = {name: _keyword_params(fn) for name, fn in PRE_AGGREGATORS.items()}
#: Keyword parameters each attack accepts.
ATTACK_PARAMS: dict[str, frozenset[str]] = {name: _keyword_params(fn) for name, fn in ATTACKS.items()}
#: Parameters without a default, for every rule, pre-aggregator and attack.
REQUIRED_PARAMS: dict[str, frozenset[str]] = {
    name: _required_params(fn) for table in (RULES, PRE_AGGREGATORS, ATTACKS) for name, fn in table.items()
}


def _lookup(kind: str, table: Mapping[str, Function], name: str) -> Function:
    if name not in table:
        raise AggregationError(f"unknown {kind} {name!r}; known: {', '.join(sorted(table))}")
    return table[name]


def _pick(accepted: frozenset[str], params: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in params.items() if key in accepted}


def _split_pre(spec: PreSpec) -> tuple[str, Mapping[str, Any]]:
    if isinstance(spec, str):
        return spec, {}
    name, own_params = spec
    unknown = set(own_params) - PRE_PARAMS.get(name, frozenset())
    if name in PRE_AGGREGATORS and unknown:
        raise AggregationError(f"{name}: unknown parameter(s) {', '.join(sorted(unknown))}")
    return name, own_params


def pre_aggregate(updates: Tensor, pre: Sequence[PreSpec], **params: Any) -> Tensor:
    """Apply pre-aggregators in order; each takes from ``params`` the names it accepts.

    An entry of ``pre`` is a name or ``(name, {param: value})`` whose params override the
    shared ones for that step, e.g. ``[("clipping", {"tau": 5.0}), "nnm"]``.
    """
    for spec in pre:
        name, own_params = _split_pre(spec)
        fn = _lookup("pre-aggregator", PRE_AGGREGATORS, name)
        given = {**_pick(PRE_PARAMS[name], params), **own_params}
        missing = REQUIRED_PARAMS[name] - set(given)
        if missing:
            raise AggregationError(f"{name}: missing parameter(s) {', '.join(sorted(missing))}")
        updates = fn(updates, **given)
    return updates


def aggregate(name: str, updates: Tensor, *, pre: Sequence[PreSpec] = (), **params: Any) -> Tensor:
    """Run rule ``name`` on ``updates`` after the pre-aggregators ``pre``.

    ``aggregate("krum", x, f=2, pre=["nnm"])`` is ``krum(nnm(x, f=2), f=2)``. Every parameter
    must be accepted by the rule or by one of the pre-aggregators (see :data:`RULE_PARAMS`,
    :data:`PRE_PARAMS`); an unknown one raises :class:`AggregationError` naming it.
    """
    fn = _lookup("rule", RULES, name)
    if isinstance(pre, str):
        pre = [pre]
    accepted = set(RULE_PARAMS[name])
    for spec in pre:
        pre_name = _split_pre(spec)[0]
        _lookup("pre-aggregator", PRE_AGGREGATORS, pre_name)
        accepted |= PRE_PARAMS[pre_name]
    unknown = set(params) - accepted
    if unknown:
        raise AggregationError(
            f"{name}: unknown parameter(s) {', '.join(sorted(unknown))}; "
            f"it takes {', '.join(sorted(RULE_PARAMS[name])) or 'none'}"
        )
    missing = REQUIRED_PARAMS[name] - set(params)
    if missing:
        raise AggregationError(f"{name}: missing parameter(s) {', '.join(sorted(missing))}")
    rows = pre_aggregate(updates, pre, **params)
    return fn(rows, **_pick(RULE_PARAMS[name], params))


def attack(name: str, honest: Tensor, **params: Any) -> Tensor:
    """Run attack ``name`` on the honest vectors; unknown or missing parameters raise."""
    fn = _lookup("attack", ATTACKS, name)
    unknown = set(params) - ATTACK_PARAMS[name]
    if unknown:
        raise AggregationError(f"{name}: unknown parameter(s) {', '.join(sorted(unknown))}")
    missing = REQUIRED_PARAMS[name] - set(params)
    if missing:
        raise AggregationError(f"{name}: missing parameter(s) {', '.join(sorted(missing))}")
    return fn(honest, **params)
