"""One simulation's settings: a frozen, validated :class:`SimConfig` from a TOML file, flags, or both.

The TOML file holds the same keys as the dataclass fields at the top level, plus the tables
``[rule_params]``, ``[attack_params]`` and ``[protocol_params]``. Flags override the file. Every problem is a
:class:`ConfigError` (a ``ValueError``) naming the key, raised before anything trains.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

CRASH_PLACEMENTS = ("random", "hubs", "relays", "data")
BYZ_PLACEMENTS = ("random", "hubs", "target")
BEHAVIOURS = ("label-flip", "silent", "equivocation")


class ConfigError(ValueError):
    """A setting that cannot be used."""


@contextmanager
def settings_errors() -> Iterator[None]:
    """Re-raise :class:`phalanx.gossip.spec.SettingsError` (protocol settings) as a :class:`ConfigError`."""
    from phalanx.gossip.spec import SettingsError

    try:
        yield
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    """Every choice of a simulation run. Times are virtual seconds; rates are per round."""

    # the run
    name: str = "run"
    nodes: int = 16
    rounds: int = 20
    seed: int = 0
    # topology and mixing
    topology: str = "regular:4"
    mixing: str = "metropolis"
    # protocol and rule
    protocol: str = "dpsgd"
    protocol_params: dict[str, Any] = field(default_factory=dict)
    rule: str = "mean"
    rule_params: dict[str, Any] = field(default_factory=dict)
    include_own: bool = True
    local_steps: int = 1
    gossip_steps: int = 1
    round_timeout: float = 1.0
    # data, model, local optimiser
    dataset: str = "mnist"
    partition: str = "iid"
    model: str = "mlp"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    sam_rho: float = 0.0
    # virtual network and time
    step_time: float = 0.01
    latency: float = 0.01
    bandwidth: float = math.inf
    loss: float = 0.0
    uplink_queue: bool = False  # a node's messages share its uplink (bandwidth) instead of independent links
    # faults
    crash_fraction: float = 0.0
    crash_nodes: tuple[int, ...] = ()
    crash_round: int = 0
    crash_placement: str = "random"
    crash_rounds: dict[str, Any] = field(default_factory=dict)  # node id -> its own crash round
    churn_leave: float = 0.0  # probability per round that a live honest node leaves
    churn_rejoin: float = 0.0  # probability per round that a departed node comes back
    # churn in virtual time, for every protocol: a CSV trace (time,node,event) or Poisson rates per node
    churn_trace: str = ""
    churn_leave_rate: float = 0.0  # announced departures per virtual second of a present node
    churn_crash_rate: float = 0.0  # silent crashes per virtual second of a present node
    churn_rejoin_rate: float = 0.0  # returns per virtual second of an absent node
    churn_late: float = 0.0  # fraction of the nodes that join late, at a uniform time
    churn_horizon: float = 0.0  # seconds the rates run for (0: rounds x (round_timeout + training time))
    partition_rounds: tuple[int, ...] = ()
    partition_nodes: tuple[int, ...] = ()  # one side of the cut; empty: nodes 0 .. n/2-1
    straggler_fraction: float = 0.0
    straggler_slowdown: float = 4.0
    # Byzantine nodes
    byzantine_fraction: float = 0.0
    byzantine_nodes: tuple[int, ...] = ()
    byzantine_placement: str = "random"
    byzantine_target: int = 0
    attack: str = "alie"
    attack_params: dict[str, Any] = field(default_factory=dict)
    attacks: dict[str, Any] = field(default_factory=dict)  # node id -> its own attack (else ``attack``)
    omniscient: bool = True
    # torch intra-op threads while the run lasts: 1 is fastest for per-node work this small (and immune to
    # the spin-waiting of idle OpenMP threads on a loaded machine)
    threads: int = 1
    # evaluation
    eval_every: int = 5
    eval_nodes: int = 0
    eval_samples: int = 0

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        need(self.nodes >= 2, f"nodes must be >= 2, got {self.nodes}")
        need(self.rounds >= 1, f"rounds must be >= 1, got {self.rounds}")
        need(self.local_steps >= 0, f"local_steps must be >= 0, got {self.local_steps}")
        need(self.gossip_steps >= 1, f"gossip_steps must be >= 1, got {self.gossip_steps}")
        for key in ("round_timeout", "lr", "step_time", "straggler_slowdown"):
            value = getattr(self, key)
            need(value > 0 and math.isfinite(value), f"{key} must be a finite number > 0, got {value}")
        need(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        for key in (
            "weight_decay",
            "sam_rho",
            "latency",
            "churn_leave_rate",
            "churn_crash_rate",
            "churn_rejoin_rate",
            "churn_horizon",
        ):
            value = getattr(self, key)
            need(value >= 0 and math.isfinite(value), f"{key} must be a finite number >= 0, got {value}")
        need(self.bandwidth > 0, f"bandwidth must be > 0, got {self.bandwidth}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(0 <= self.loss < 1, f"loss must be in [0, 1), got {self.loss}")
        for key in (
            "crash_fraction",
            "byzantine_fraction",
            "straggler_fraction",
            "churn_leave",
            "churn_rejoin",
        ):
            value = getattr(self, key)
            need(0 <= value <= 1, f"{key} must be in [0, 1], got {value}")
        need(self.byzantine_fraction < 1, "byzantine_fraction must leave at least one honest node")
        need(0 <= self.churn_late < 1, f"churn_late must be in [0, 1), got {self.churn_late}")
        need(self.crash_round >= 0, f"crash_round must be >= 0, got {self.crash_round}")
        need(
            self.crash_placement in CRASH_PLACEMENTS,
            f"unknown crash_placement {self.crash_placement!r}; choose one of: {', '.join(CRASH_PLACEMENTS)}",
        )
        need(
            self.byzantine_placement in BYZ_PLACEMENTS,
            f"unknown byzantine_placement {self.byzantine_placement!r}; choose one of: {', '.join(BYZ_PLACEMENTS)}",
        )
        for key in ("crash_nodes", "byzantine_nodes", "partition_nodes"):
            ids = getattr(self, key)
            need(all(0 <= i < self.nodes for i in ids), f"{key} must be node ids in 0..{self.nodes - 1}")
            need(len(set(ids)) == len(ids), f"{key} lists a node twice")
        need(0 <= self.byzantine_target < self.nodes, f"byzantine_target must be in 0..{self.nodes - 1}")
        need(
            len(self.partition_rounds) in (0, 2)
            and all(r >= 0 for r in self.partition_rounds)
            and (not self.partition_rounds or self.partition_rounds[0] < self.partition_rounds[1]),
            "partition_rounds must be two rounds [start, end) with start < end",
        )
        need(
            len(self.partition_nodes) < self.nodes,
            "partition_nodes must leave at least one node on the other side of the cut",
        )
        need(self.threads >= 1, f"threads must be >= 1, got {self.threads}")
        need(self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}")
        need(self.eval_nodes >= 0 and self.eval_samples >= 0, "eval_nodes and eval_samples must be >= 0")
        need(self.num_byzantine < self.nodes, "every node would be Byzantine")
        for key, table in (("attacks", self.attacks), ("crash_rounds", self.crash_rounds)):
            need(
                all(k.isdigit() and int(k) < self.nodes for k in table),
                f"{key} must map node ids in 0..{self.nodes - 1} to values",
            )
        need(
            all(type(r) is int and r >= 0 for r in self.crash_rounds.values()),
            "crash_rounds must map node ids to rounds >= 0",
        )
        need(
            all(isinstance(a, str) and a for a in self.attacks.values()),
            "attacks must map node ids to attack names",
        )
        need(
            not self.attacks or {int(k) for k in self.attacks} <= set(self.byzantine_nodes),
            "attacks may only name nodes listed in byzantine_nodes",
        )

    @property
    def num_byzantine(self) -> int:
        return len(self.byzantine_nodes) or round(self.byzantine_fraction * self.nodes)

    @property
    def num_crashed(self) -> int:
        return len(self.crash_nodes) or round(self.crash_fraction * self.nodes)

    def attack_of(self, node: int) -> str:
        """The attack of Byzantine node ``node``: its own in ``attacks``, else ``attack``."""
        return str(self.attacks.get(str(node), self.attack))

    def crash_round_of(self, node: int) -> int:
        """When planned crash ``node`` crashes: its own round in ``crash_rounds``, else ``crash_round``."""
        return int(self.crash_rounds.get(str(node), self.crash_round))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
            if isinstance(value, float) and math.isinf(value):
                out[key] = "inf"
        return out

    def replace(self, **changes: Any) -> SimConfig:
        return from_mapping({**self.to_dict(), **changes})


FIELDS = {f.name: f for f in fields(SimConfig)}
_TABLES = ("rule_params", "attack_params", "protocol_params", "attacks", "crash_rounds")


def _coerce(key: str, value: Any) -> Any:
    default = FIELDS[key].default
    if key in _TABLES:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table of name = value")
        return dict(value)
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple) or not all(type(v) is int for v in value):
            raise ConfigError(f"{key} must be a list of whole numbers")
        return tuple(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false")
        return value
    if isinstance(default, int):
        if type(value) is not int:
            raise ConfigError(f"{key} must be a whole number, got {value!r}")
        return value
    if isinstance(default, float):
        if value == "inf":
            return math.inf
        if type(value) not in (int, float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def from_mapping(data: dict[str, Any]) -> SimConfig:
    """A config from plain values (a parsed TOML document); unknown keys are errors."""
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in FIELDS:
            raise ConfigError(f"unknown setting {key!r}")
        values[key] = _coerce(key, value)
    return SimConfig(**values)


def load_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path} is not valid TOML: {exc}") from None


def parse_value(text: str) -> Any:
    """A flag's KEY=VALUE value: TOML syntax when it parses (numbers, booleans, lists), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def presets_dir() -> Path:
    return Path(__file__).resolve().parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.toml"))


def load_preset(name: str) -> dict[str, Any]:
    path = presets_dir() / f"{name}.toml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    return load_toml(path)


def preset_description(name: str) -> str:
    """The first comment line of a preset file."""
    for line in (presets_dir() / f"{name}.toml").read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""
