"""MoDeST's settings: :class:`ModestConfig` (what one node runs with) and :class:`ModestParams` (the
``protocol_params`` a user gives, with their defaults and help), mapped by :func:`configure`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from phalanx.gossip.modest.admission import AdmissionPolicy
from phalanx.gossip.spec import RunSettings, WorldDefaults


@dataclass(frozen=True, slots=True, kw_only=True)
class ModestConfig:
    """MoDeST's parameters. Times are seconds on the runner's clock; ``inactivity`` counts rounds.

    ``rushing`` is a Byzantine aggregator's setting: it aggregates (and sends its poison) as soon as the
    first trained model arrives instead of waiting for the success fraction. ``byzantine_roles`` says when
    a Byzantine node attacks (as a trainer and/or an aggregator); an honest node ignores it.
    """

    s: int = 10
    a: int = 1
    success_fraction: float = 1.0
    ping_timeout: float = 1.0
    ping_retry: float = 0.25
    aggregation_timeout: float = 5.0
    inactivity: int = 1000
    local_steps: int = 1
    aggregator_rule: str = "mean"
    aggregator_params: Mapping[str, Any] = field(default_factory=dict)
    trainer_combine_rule: str | None = None
    trainer_combine_params: Mapping[str, Any] = field(default_factory=dict)
    combine_quorum: int = 0
    view_window: int = 2
    announce: int = 3
    join_delay: int = 2
    rounds: int = 0
    progress_timeout: float = 10.0
    watch_limit: int = 3
    rushing: bool = False
    max_round_step: int = 2  # how far past this node's round a received record's claim may reach
    round_witnesses: int = 2  # distinct members whose pongs must vouch for a newer round
    admission: AdmissionPolicy = field(default_factory=AdmissionPolicy)  # who may become a member
    sample_slack: int = 10  # rank positions past s (or a) from which a round's models are still accepted
    byzantine_roles: tuple[str, ...] = ("trainer", "aggregator")  # read only by a Byzantine node's builder

    def __post_init__(self) -> None:
        if self.s < 1 or self.a < 1:
            raise ValueError(f"s and a must be >= 1, got s={self.s}, a={self.a}")
        if not 0 < self.success_fraction <= 1:
            raise ValueError(f"success_fraction must be in (0, 1], got {self.success_fraction}")
        if not (self.ping_timeout > 0 and self.ping_retry > 0 and self.aggregation_timeout > 0):
            raise ValueError("ping_timeout, ping_retry and aggregation_timeout must be > 0")
        if self.inactivity < 0 or self.local_steps < 0 or self.view_window < 0 or self.announce < 1:
            raise ValueError("inactivity, local_steps and view_window must be >= 0, announce >= 1")
        if not 0 <= self.combine_quorum <= self.a:
            raise ValueError(f"combine_quorum must be in [0, a], got {self.combine_quorum}")
        if not self.byzantine_roles or set(self.byzantine_roles) - {"trainer", "aggregator"}:
            raise ValueError(f"byzantine_roles must be trainer and/or aggregator, got {self.byzantine_roles}")
        if self.max_round_step < 1 or self.sample_slack < 0 or self.round_witnesses < 1:
            raise ValueError("max_round_step and round_witnesses must be >= 1, sample_slack >= 0")
        if self.join_delay < 1 or self.rounds < 0 or self.watch_limit < 0 or not self.progress_timeout > 0:
            raise ValueError("join_delay must be >= 1, rounds and watch_limit >= 0, progress_timeout > 0")

    @property
    def needed_models(self) -> int:
        """Trained models an aggregator waits for (one, for a rushing aggregator)."""
        if self.rushing:
            return 1
        return max(1, math.ceil(self.success_fraction * self.s - 1e-9))

    @property
    def quorum(self) -> int:
        return self.combine_quorum or self.a


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True, slots=True, kw_only=True)
class ModestParams:
    """MoDeST's ``protocol_params`` (``--protocol-param KEY=VALUE`` or the ``[protocol_params]`` table)."""

    s: int = field(default=10, metadata=_help("trainers sampled per round"))
    a: int = field(default=1, metadata=_help("aggregators sampled per round"))
    success_fraction: float = field(
        default=1.0, metadata=_help("fraction of the s trained models an aggregator waits for")
    )
    ping_timeout: float | None = field(
        default=None, metadata=_help("seconds before a silent candidate is replaced (default: the runner's)")
    )
    ping_retry: float | None = field(default=None, metadata=_help("seconds between pings (ping_timeout / 4)"))
    aggregation_timeout: float | None = field(
        default=None, metadata=_help("seconds an aggregator waits after the first model (round_timeout)")
    )
    progress_timeout: float | None = field(
        default=None, metadata=_help("seconds before a round whose chosen peers died is handed on")
    )
    inactivity: int = field(default=1000, metadata=_help("rounds after which a silent member is not sampled"))
    trainer_combine_rule: str | None = field(
        default=None,
        metadata=_help("robust variant: rule trainers combine the a aggregates with (e.g. median)"),
    )
    trainer_combine_f: int | None = field(default=None, metadata=_help("the f of trainer_combine_rule"))
    combine_quorum: int = field(default=0, metadata=_help("aggregates a trainer waits for (0: a)"))
    announce: int = field(default=3, metadata=_help("peers a join or leave is announced to"))
    join_delay: int = field(default=2, metadata=_help("rounds before a joiner can be sampled"))
    view_window: int = field(default=2, metadata=_help("rounds of view changes sent with each model"))
    max_round_step: int = field(
        default=2, metadata=_help("rounds past this node's a received membership record may claim")
    )
    round_witnesses: int = field(
        default=2, metadata=_help("distinct members that must vouch for a newer round before it is adopted")
    )
    sample_slack: int = field(
        default=10, metadata=_help("rank positions past s (or a) from which a round's models are accepted")
    )
    byzantine_roles: str = field(
        default="trainer,aggregator",
        metadata=_help("when a Byzantine node attacks: trainer and/or aggregator"),
    )
    members: tuple[str, ...] = field(
        default=(), metadata=_help("allow-list: the only peer ids that may become members (empty: anyone)")
    )
    pow_bits: int = field(
        default=0, metadata=_help("proof of work a newcomer's peer id must carry (leading zero bits)")
    )
    admit_per_round: int = field(
        default=0, metadata=_help("newcomers admitted per round at most (0: no cap)")
    )
    admit_per_introducer: int = field(
        default=0, metadata=_help("newcomers admitted per round from one introducer's records (0: no cap)")
    )

    def roles(self) -> tuple[str, ...]:
        return tuple(r.strip() for r in self.byzantine_roles.split(",") if r.strip())


# The node's defaults for the timeouts the simulator derives from its virtual network instead.
PING_TIMEOUT = 1.0
PROGRESS_TIMEOUT = 10.0


def configure(settings: RunSettings, params: ModestParams, world: WorldDefaults) -> ModestConfig:
    ping_timeout = params.ping_timeout
    if ping_timeout is None:
        ping_timeout = world.ping_timeout if world.ping_timeout is not None else PING_TIMEOUT
    progress = params.progress_timeout
    if progress is None:
        progress = world.progress_timeout if world.progress_timeout is not None else PROGRESS_TIMEOUT
    return ModestConfig(
        s=params.s,
        a=params.a,
        success_fraction=params.success_fraction,
        ping_timeout=ping_timeout,
        ping_retry=params.ping_retry if params.ping_retry is not None else ping_timeout / 4,
        aggregation_timeout=(
            params.aggregation_timeout if params.aggregation_timeout is not None else settings.round_timeout
        ),
        progress_timeout=progress,
        inactivity=params.inactivity,
        local_steps=settings.local_steps,
        aggregator_rule=settings.rule,
        aggregator_params=dict(settings.rule_params),
        trainer_combine_rule=params.trainer_combine_rule or None,
        trainer_combine_params={} if params.trainer_combine_f is None else {"f": params.trainer_combine_f},
        combine_quorum=params.combine_quorum,
        announce=params.announce,
        join_delay=params.join_delay,
        view_window=params.view_window,
        max_round_step=params.max_round_step,
        round_witnesses=params.round_witnesses,
        admission=AdmissionPolicy(
            allow=frozenset(params.members) if params.members else None,
            pow_bits=params.pow_bits,
            per_round=params.admit_per_round,
            per_introducer=params.admit_per_introducer,
        ),
        sample_slack=params.sample_slack,
        rounds=settings.rounds,
        byzantine_roles=params.roles(),
    )
