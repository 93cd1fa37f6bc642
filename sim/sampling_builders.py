"""Simulator builders for the sampling protocols: MoDeST (``modest``), EL-Local (``el-local``), EL-Oracle
(``el-oracle``). Registered in :data:`phalanx.sim.protocols.PROTOCOLS`.

Their settings come from ``config.protocol_params`` (``--protocol-param KEY=VALUE`` or ``[protocol_params]``),
mapped to config objects by :mod:`phalanx.gossip.settings` (which the real node uses too), besides the shared
``rule``/``rule_params`` (MoDeST's aggregators), ``local_steps``, ``round_timeout`` and ``rounds``:

- modest: ``s`` (10), ``a`` (1), ``success_fraction`` (1.0), ``ping_timeout`` (max(0.05, 5 x latency)),
  ``ping_retry`` (ping_timeout / 4), ``aggregation_timeout`` (round_timeout), ``progress_timeout``
  (round_timeout + 2 x training time), ``inactivity`` (1000 rounds), ``trainer_combine_rule`` (none: plain
  MoDeST; e.g. "median" for the robust variant), ``trainer_combine_f`` (its ``f``, for rules that take one),
  ``combine_quorum`` (a), ``announce`` (3), ``join_delay`` (2),
  ``byzantine_roles`` ("trainer,aggregator"), and churn: ``churn`` (a CSV trace ``time,node,event``) or
  ``churn_leave``/``churn_crash``/``churn_rejoin`` (rates per virtual second per node) with ``churn_late``
  (fraction of nodes that join late) and ``churn_horizon`` (seconds);
- el-local / el-oracle: ``s`` (7).

Byzantine nodes (``byzantine_fraction``/``byzantine_nodes`` with any ``attack``) run MoDeST honestly inside
:class:`~phalanx.gossip.modest.ByzantineModest`, which replaces the models they send as trainers and/or
aggregators (``view.byzantine`` names them). The experiment's own Byzantine wrapper only rewrites
``ModelUpdate`` messages (what EL sends, so EL needs nothing more) and passes MoDeST's messages through.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from phalanx.gossip.epidemic import Epidemic
from phalanx.gossip.modest import ByzantineModest, Modest, ModestConfig
from phalanx.gossip.protocol import Protocol
from phalanx.gossip.settings import EL_S, epidemic_config, modest_byzantine_roles
from phalanx.gossip.settings import modest_config as shared_modest_config
from phalanx.node.learner import derive_seed
from phalanx.sim.churn import Trace, churn_from_rates, read_churn_csv
from phalanx.sim.config import ConfigError, settings_errors

if TYPE_CHECKING:
    from phalanx.gossip.epidemic import EpidemicConfig
    from phalanx.sim.config import SimConfig
    from phalanx.sim.protocols import NodeView

# The simulator's own MoDeST keys (read here, not by gossip.settings): a churn trace or churn rates.
CHURN_KEYS = frozenset({"churn", "churn_leave", "churn_crash", "churn_rejoin", "churn_late", "churn_horizon"})


def modest_config(config: SimConfig) -> ModestConfig:
    """MoDeST's config from gossip.settings, with timeouts derived from the virtual network and step time."""
    with settings_errors():
        return shared_modest_config(
            config,
            ping_timeout_default=max(0.05, 5 * config.latency),
            progress_timeout_default=config.round_timeout + 2 * config.local_steps * config.step_time,
            extra_keys=CHURN_KEYS,
        )


def el_config(config: SimConfig, variant: str) -> EpidemicConfig:
    """EL's config from gossip.settings; ``variant`` is "local" or "oracle"."""
    with settings_errors():
        return epidemic_config(config, variant=variant)


def _churn_key(config: SimConfig) -> tuple[Any, ...]:
    p = config.protocol_params
    return (
        config.nodes,
        config.seed,
        p.get("churn"),
        *(float(p.get(k, 0.0)) for k in ("churn_leave", "churn_crash", "churn_rejoin", "churn_late")),
        float(
            p.get(
                "churn_horizon",
                config.rounds * (config.round_timeout + config.local_steps * config.step_time),
            )
        ),
    )


@lru_cache(maxsize=4)
def _churn(key: tuple[Any, ...]) -> Trace:
    nodes, seed, path, leave, crash, rejoin, late, horizon = key
    try:
        if path:
            return read_churn_csv(path, nodes=nodes)
        if leave or crash or rejoin or late:
            return churn_from_rates(
                nodes,
                leave=leave,
                crash=crash,
                rejoin=rejoin,
                late=late,
                horizon=horizon,
                seed=derive_seed(seed, "churn"),
            )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return {}


def build_modest(view: NodeView, config: SimConfig, rng: np.random.Generator) -> Protocol:
    """MoDeST over every peer of the simulation (plain, or robust with ``trainer_combine_rule``)."""
    settings = modest_config(config)
    schedule = _churn(_churn_key(config)).get(view.node, ())
    node = Modest(
        node=view.node,
        params=view.initial,
        peers=view.peers,
        config=settings,
        rng=rng,
        schedule=schedule,
    )
    if view.node in view.byzantine:
        attack = "silent" if config.attack == "silent" else config.attack
        if attack in ("label-flip",):
            return node  # the poison is in the node's data
        try:
            return ByzantineModest(
                node,
                attack=attack,
                attack_params=config.attack_params,
                roles=modest_byzantine_roles(config.protocol_params),
            )
        except ValueError as exc:
            raise ConfigError(f"modest: {exc}") from None
    return node


def modest_rule_inputs(config: SimConfig) -> int:
    """The fewest trained models a MoDeST aggregator combines without a timeout: its rule must cope."""
    return modest_config(config).needed_models


def el_rule_inputs(config: SimConfig) -> int:
    return int(config.protocol_params.get("s", EL_S)) + 1


def _build_el(view: NodeView, config: SimConfig, rng: np.random.Generator, variant: str) -> Protocol:
    settings = el_config(config, variant)
    try:
        return Epidemic(node=view.node, params=view.initial, peers=view.peers, config=settings, rng=rng)
    except ValueError as exc:
        raise ConfigError(f"el-{variant}: {exc}") from None


def build_el_local(view: NodeView, config: SimConfig, rng: np.random.Generator) -> Protocol:
    """EL-Local: send to s uniformly random peers each round."""
    return _build_el(view, config, rng, "local")


def build_el_oracle(view: NodeView, config: SimConfig, rng: np.random.Generator) -> Protocol:
    """EL-Oracle: a fresh random s-regular graph each round."""
    return _build_el(view, config, rng, "oracle")
