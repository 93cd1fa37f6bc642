"""User settings -> protocol config objects, once for both worlds (the simulator and the real node).

A run's protocol settings (:class:`RunSettings`, which both ``SimConfig`` and ``NodeConfig`` are) are the
shared ones (``rule``, ``rule_params``, ``local_steps``, ``gossip_steps``, ``round_timeout``, ``rounds``,
``seed``) and the generic ``protocol_params`` mapping (``--protocol-param KEY=VALUE`` or the
``[protocol_params]`` table). :func:`dpsgd_config`, :func:`modest_config` and :func:`epidemic_config`
turn them into :class:`~phalanx.gossip.dpsgd.DPSGDConfig`, :class:`~phalanx.gossip.modest.ModestConfig` and
:class:`~phalanx.gossip.epidemic.EpidemicConfig`; ``sim/`` and ``node/`` both call them, passing only
what differs between the worlds (the simulator's latency-derived MoDeST timeouts, the node's EL sample size
bounded by its neighbours, the simulator's churn keys). Every problem is a :class:`SettingsError` (a
``ValueError``) whose one-line message names the protocol and the key.

protocol_params per protocol:

- dpsgd: none.
- modest: ``s`` (10), ``a`` (1), ``success_fraction`` (1.0), ``ping_timeout`` (the caller's default),
  ``ping_retry`` (ping_timeout / 4), ``aggregation_timeout`` (round_timeout), ``progress_timeout`` (the
  caller's default), ``inactivity`` (1000 rounds), ``trainer_combine_rule`` (none: plain MoDeST; e.g.
  "median" for the robust variant), ``trainer_combine_f`` (its ``f``), ``combine_quorum`` (a),
  ``announce`` (3), ``join_delay`` (2), ``view_window`` (2), ``byzantine_roles`` ("trainer,aggregator",
  read by :func:`modest_byzantine_roles`).
- el-local / el-oracle: ``s`` (7, or the caller's default).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from phalanx.gossip.dpsgd import DPSGDConfig, Weights
from phalanx.gossip.epidemic import EpidemicConfig
from phalanx.gossip.events import PeerId
from phalanx.gossip.modest import ModestConfig

DPSGD_KEYS: frozenset[str] = frozenset()
MODEST_KEYS = frozenset(
    {
        "s",
        "a",
        "success_fraction",
        "ping_timeout",
        "ping_retry",
        "aggregation_timeout",
        "progress_timeout",
        "inactivity",
        "trainer_combine_rule",
        "trainer_combine_f",
        "combine_quorum",
        "announce",
        "join_delay",
        "view_window",
        "byzantine_roles",
    }
)
EL_KEYS = frozenset({"s"})
EL_S = 7  # EL's default sample size
KNOWN_KEYS = {"dpsgd": DPSGD_KEYS, "modest": MODEST_KEYS, "el-local": EL_KEYS, "el-oracle": EL_KEYS}

# ModestConfig's own defaults for the timeouts the simulator derives from its virtual network instead.
MODEST_PING_TIMEOUT = 1.0
MODEST_PROGRESS_TIMEOUT = 10.0


class RunSettings(Protocol):
    """The settings every protocol reads (fields of both ``SimConfig`` and ``NodeConfig``)."""

    @property
    def protocol_params(self) -> Mapping[str, Any]: ...
    @property
    def rule(self) -> str: ...
    @property
    def rule_params(self) -> Mapping[str, Any]: ...
    @property
    def local_steps(self) -> int: ...
    @property
    def gossip_steps(self) -> int: ...
    @property
    def round_timeout(self) -> float: ...
    @property
    def rounds(self) -> int: ...
    @property
    def seed(self) -> int: ...


class SettingsError(ValueError):
    """A protocol setting that cannot be used; the message names the protocol and the key."""


def check_keys(
    protocol: str, params: Mapping[str, Any], known: frozenset[str], extra: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """``params`` as a dict, or :class:`SettingsError` naming the keys ``protocol`` does not know."""
    allowed = known | extra
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise SettingsError(
            f"unknown protocol_params {', '.join(unknown)} for {protocol}; known: {', '.join(sorted(allowed))}"
            if allowed
            else f"unknown protocol_params {', '.join(unknown)} for {protocol}; it takes none"
        )
    return dict(params)


def dpsgd_config(
    settings: RunSettings,
    *,
    neighbours: tuple[PeerId, ...],
    weights: Weights | None = None,
    schedule: Callable[[int], Weights] | None = None,
    include_own: bool = True,
) -> DPSGDConfig:
    """D-PSGD's config (DFedSAM / DFedSAM-MGS through the learner's ``sam_rho`` and ``gossip_steps``)."""
    check_keys("dpsgd", settings.protocol_params, DPSGD_KEYS)
    try:
        return DPSGDConfig(
            neighbours=neighbours,
            weights=weights,
            rule=settings.rule,
            rule_params=settings.rule_params,
            local_steps=settings.local_steps,
            gossip_steps=settings.gossip_steps,
            round_timeout=settings.round_timeout,
            rounds=settings.rounds,
            schedule=schedule,
            include_own=include_own,
        )
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"dpsgd: {exc}") from None


def modest_config(
    settings: RunSettings,
    *,
    ping_timeout_default: float = MODEST_PING_TIMEOUT,
    progress_timeout_default: float = MODEST_PROGRESS_TIMEOUT,
    extra_keys: frozenset[str] = frozenset(),
) -> ModestConfig:
    """MoDeST's config. ``extra_keys`` are keys the caller reads itself (the simulator's churn), allowed here."""
    p = check_keys("modest", settings.protocol_params, MODEST_KEYS, extra_keys)
    try:
        ping_timeout = float(p.get("ping_timeout", ping_timeout_default))
        return ModestConfig(
            s=int(p.get("s", 10)),
            a=int(p.get("a", 1)),
            success_fraction=float(p.get("success_fraction", 1.0)),
            ping_timeout=ping_timeout,
            ping_retry=float(p.get("ping_retry", ping_timeout / 4)),
            aggregation_timeout=float(p.get("aggregation_timeout", settings.round_timeout)),
            progress_timeout=float(p.get("progress_timeout", progress_timeout_default)),
            inactivity=int(p.get("inactivity", 1000)),
            local_steps=settings.local_steps,
            aggregator_rule=settings.rule,
            aggregator_params=dict(settings.rule_params),
            trainer_combine_rule=p.get("trainer_combine_rule") or None,
            trainer_combine_params={"f": int(p["trainer_combine_f"])} if "trainer_combine_f" in p else {},
            combine_quorum=int(p.get("combine_quorum", 0)),
            announce=int(p.get("announce", 3)),
            join_delay=int(p.get("join_delay", 2)),
            view_window=int(p.get("view_window", 2)),
            rounds=settings.rounds,
        )
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"modest: {exc}") from None


def modest_byzantine_roles(params: Mapping[str, Any]) -> tuple[str, ...]:
    """When a Byzantine MoDeST node attacks: ``byzantine_roles`` ("trainer,aggregator" by default)."""
    return tuple(r.strip() for r in str(params.get("byzantine_roles", "trainer,aggregator")).split(","))


def epidemic_config(settings: RunSettings, *, variant: str, s_default: int = EL_S) -> EpidemicConfig:
    """Epidemic Learning's config; ``variant`` is "local" or "oracle" (protocol ``el-local`` / ``el-oracle``)."""
    p = check_keys(f"el-{variant}", settings.protocol_params, EL_KEYS)
    try:
        return EpidemicConfig(
            s=int(p.get("s", s_default)),
            variant=variant,
            local_steps=settings.local_steps,
            round_timeout=settings.round_timeout,
            rounds=settings.rounds,
            seed=settings.seed,
        )
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"el-{variant}: {exc}") from None
