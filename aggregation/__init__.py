"""phalanx.aggregation: Byzantine-robust aggregation rules and attack vectors, as pure torch functions.

Rules
    ``rule(updates, *, <params>) -> Tensor``: ``updates`` is an (n, d) floating tensor, one vector
    per row; the result is (d,), on the same device and dtype. Nothing is modified in place.
    Registry :data:`RULES` (name -> function); entry point :func:`aggregate`::

        aggregate("trimmed-mean", x, f=2)
        aggregate("krum", x, f=2, pre=["nnm"])            # pre-aggregators compose with any rule
        aggregate("cs-plus", neighbours, own=x_i, weights=w_i, f=1)

Who is a row
    For ordinary rules every vector to combine is a row: a node that wants its own model
    counted includes it as a row. The rules relative to the node (:data:`GOSSIP_RULES`: monna,
    clipped-gossip, adaptive-clipped-gossip, cs-plus, gts, rfa-gossip) take the n neighbours' vectors as
    rows and the node's own vector separately as ``own`` (d,); the gossip ones also take
    ``weights`` (n,), the node's mixing weights for those neighbours, its own weight being
    ``1 - weights.sum()``. ``mean`` and ``geometric-median`` accept optional per-row
    ``weights`` normalised by their sum.

Parameters
    ``f`` is always the number of Byzantine inputs tolerated among the n rows. :func:`aggregate`
    is strict: a parameter that neither the rule nor a pre-aggregator takes raises
    :class:`AggregationError` naming it. :data:`RULE_PARAMS` / :data:`PRE_PARAMS` /
    :data:`ATTACK_PARAMS` give each function's keyword parameters (read from the signatures)
    so that a caller holding generic settings (f, tau, own, weights, seed) can filter them;
    :data:`REQUIRED_PARAMS` the ones without default.

Validation
    Every bad input raises :class:`AggregationError` (a ``ValueError``) naming the rule, n, f
    and what is required. :func:`requirement` (raise) and :func:`max_f` (largest tolerated f)
    let a simulator validate a configuration for given degrees before training. Non-finite
    rows are rejected, never aggregated: callers drop them first with :func:`finite_rows`.

Fused kernels
    :mod:`.fused` computes mean, median, trimmed mean and weighted sums over a *list* of rows in
    one native pass (C, built at install time when a compiler is present); the rules above use it
    on the CPU, and a gossip combiner can call it without stacking its rows first.

Attacks
    ``attack(honest, *, <params>) -> Tensor``: the (h, d) honest vectors the attacker sees ->
    one (d,) malicious vector. Registry :data:`ATTACKS`; entry point :func:`attack`.
"""

from . import fused
from .registry import (
    ATTACK_PARAMS,
    ATTACKS,
    GOSSIP_RULES,
    PRE_AGGREGATORS,
    PRE_PARAMS,
    REQUIRED_PARAMS,
    RULE_PARAMS,
    RULES,
    aggregate,
    attack,
    pre_aggregate,
)
from .validation import REQUIREMENTS, AggregationError, finite_rows, max_f, requirement

__all__ = [
    "ATTACKS",
    "ATTACK_PARAMS",
    "GOSSIP_RULES",
    "PRE_AGGREGATORS",
    "PRE_PARAMS",
    "REQUIRED_PARAMS",
    "REQUIREMENTS",
    "RULES",
    "RULE_PARAMS",
    "AggregationError",
    "aggregate",
    "attack",
    "finite_rows",
    "fused",
    "max_f",
    "pre_aggregate",
    "requirement",
]
