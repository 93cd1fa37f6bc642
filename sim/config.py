"""One simulation's settings: a frozen, validated :class:`SimConfig` from a TOML file, flags, or both.

The TOML file holds the same keys as the dataclass fields at the top level, plus the tables
``[rule_params]``, ``[attack_params]`` and ``[protocol_params]``. Flags override the file. Every problem is a
:class:`ConfigError` (a ``ValueError``, the node's too) naming the key, raised before anything trains.
Values are coerced by :func:`phalanx.gossip.fields.coerce` from the field types, and bounded by the fields'
metadata, which also holds the help that ``phalanx sim --help`` shows.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from phalanx.gossip import fields as fields_
from phalanx.node.device import parse_device
from phalanx.node.train_settings import setting

CRASH_PLACEMENTS = ("random", "hubs", "relays", "data")
BYZ_PLACEMENTS = ("random", "hubs", "target")
BEHAVIOURS = ("label-flip", "silent", "equivocation")


ConfigError = fields_.ConfigError  # one class for the simulator and the node (phalanx.gossip.fields)


@contextmanager
def settings_errors() -> Iterator[None]:
    """Re-raise :class:`phalanx.gossip.spec.SettingsError` (protocol settings) as a :class:`ConfigError`."""
    from phalanx.gossip.spec import SettingsError

    try:
        yield
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None


def _f(default: Any, help: str, **bounds: Any) -> Any:
    """A field with its default, its help (the CLI's flag help reads it) and its bounds."""
    return field(default=default, metadata={"help": help, **bounds})


_FRACTION = {"min": 0, "max": 1}
_SECONDS = {"min": 0, "finite": True}
_POSITIVE = {"gt": 0, "finite": True}


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    """Every choice of a simulation run. Times are virtual seconds; rates are per round.

    Each field's metadata holds its help (``phalanx sim --help`` shows it) and its bounds
    (:func:`phalanx.gossip.fields.check_bounds`); the training settings come from
    :mod:`phalanx.node.train_settings`, shared with the node.
    """

    # the run
    name: str = _f("run", "run name, the output folder's default name")
    nodes: int = _f(16, "number of nodes", min=2)
    rounds: int = _f(20, "number of rounds", min=1)
    seed: int = setting("seed")
    # topology and mixing
    topology: str = _f("regular:4", "the communication graph")
    mixing: str = _f("metropolis", "mixing weights: metropolis, uniform or max-degree")
    # protocol and rule
    protocol: str = _f("dpsgd", "the protocol")
    protocol_params: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "the protocol's parameters"}
    )
    rule: str = _f("mean", "aggregation rule (mean = D-PSGD mixing)")
    rule_params: dict[str, Any] = field(default_factory=dict, metadata={"help": "the rule's parameters"})
    include_own: bool = _f(
        True, "robust (non-gossip) rules aggregate the node's own model with its neighbours'"
    )
    local_steps: int = _f(1, "local SGD steps per round", min=1)
    gossip_steps: int = _f(1, "Q gossip exchanges per round (DFedSAM-MGS)", min=1)
    round_timeout: float = _f(1.0, "virtual seconds to wait for neighbours", **_POSITIVE)
    # data, model, local optimiser
    dataset: str = setting("dataset")
    partition: str = setting("partition")
    model: str = setting("model")
    lr: float = setting("lr")
    momentum: float = setting("momentum")
    weight_decay: float = setting("weight_decay")
    batch_size: int = setting("batch_size")
    sam_rho: float = setting("sam_rho")
    buffers: str = setting("buffers")
    # transfer learning (docs/transfer.md)
    train_only: str = setting("train_only")
    features: str = setting("features")
    # held-out local evaluation (issue 15; node/learner.py holdout_split)
    eval_holdout: int = setting("eval_holdout")
    # compressed exchange and differential privacy (issue 18; docs/compression.md)
    compress: str = setting("compress")
    dp_clip: float = setting("dp_clip")
    dp_sigma: float = setting("dp_sigma")
    dp_epsilon: float = setting("dp_epsilon")
    dp_delta: float = setting("dp_delta")
    # bring your own optimiser, loss and device (issue 16)
    optimizer: str = setting("optimizer")
    loss_fn: str = setting("loss_fn")
    device: str = setting("device")
    # virtual network and time
    step_time: float = _f(0.01, "virtual seconds per local step", **_POSITIVE)
    latency: float = _f(0.01, "default link latency (virtual seconds)", **_SECONDS)
    bandwidth: float = _f(math.inf, "default link bandwidth (bytes per virtual second)", gt=0)
    loss: float = _f(0.0, "message loss probability", min=0, lt=1)
    uplink_queue: bool = _f(
        False, "a node's messages share its uplink's bandwidth, one after another (else independent links)"
    )
    # faults
    crash_fraction: float = _f(
        0.0, "fraction of the honest nodes (nodes - Byzantine) that crash", **_FRACTION
    )
    crash_nodes: tuple[int, ...] = _f((), "ids of nodes that crash")
    crash_round: int = _f(0, "round at which they crash", min=0)
    crash_placement: str = _f(
        "random", "which nodes crash: random, hubs, relays or data", choices=CRASH_PLACEMENTS
    )
    crash_rounds: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "node id -> its own crash round"}
    )
    churn_leave: float = _f(0.0, "per-round probability that a live honest node leaves", **_FRACTION)
    churn_rejoin: float = _f(0.0, "per-round probability that a departed node rejoins", **_FRACTION)
    # churn in virtual time, for every protocol: a CSV trace (time,node,event) or Poisson rates per node
    churn_trace: str = _f("", "CSV churn trace (time,node,event: join, leave or crash), any protocol")
    churn_leave_rate: float = _f(0.0, "announced leaves per virtual second per node", **_SECONDS)
    churn_crash_rate: float = _f(0.0, "silent crashes per virtual second per node", **_SECONDS)
    churn_rejoin_rate: float = _f(0.0, "returns per virtual second per absent node", **_SECONDS)
    churn_late: float = _f(0.0, "fraction of nodes that join late, at a uniform time", min=0, lt=1)
    churn_horizon: float = _f(
        0.0, "seconds the churn rates run for (0: rounds x (round_timeout + training time))", **_SECONDS
    )
    partition_rounds: tuple[int, ...] = _f((), "START:END rounds of a network partition")
    partition_nodes: tuple[int, ...] = _f((), "ids on one side of the partition (default: the first half)")
    straggler_fraction: float = _f(0.0, "fraction of slow trainers", **_FRACTION)
    straggler_slowdown: float = _f(4.0, "how many times slower they train", **_POSITIVE)
    # Byzantine nodes
    byzantine_fraction: float = _f(0.0, "fraction of Byzantine nodes", **_FRACTION)
    byzantine_nodes: tuple[int, ...] = _f((), "ids of Byzantine nodes")
    byzantine_placement: str = _f("random", "where they sit: random, hubs or target", choices=BYZ_PLACEMENTS)
    byzantine_target: int = _f(0, "node surrounded by placement 'target'", min=0)
    attack: str = _f(
        "alie", "an aggregation attack (alie, ipm, ...), dissensus, label-flip, silent, equivocation"
    )
    attack_params: dict[str, Any] = field(default_factory=dict, metadata={"help": "the attack's parameters"})
    attacks: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "node id -> its own attack (else attack)"}
    )
    omniscient: bool = _f(True, "simulated attackers see the honest vectors they need")
    # torch intra-op threads while the run lasts: 1 is fastest for per-node work this small (and immune to
    # the spin-waiting of idle OpenMP threads on a loaded machine)
    threads: int = _f(1, "torch threads during the run (1: fastest for small models)", min=1)
    # evaluation
    eval_every: int = _f(5, "evaluate every N rounds", min=1)
    eval_nodes: int = _f(0, "evaluate a fixed seeded subset of K honest nodes (0 = all)", min=0)
    eval_samples: int = _f(0, "evaluate on the first N test samples (0 = all)", min=0)

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        fields_.check_bounds(self, error=ConfigError)
        self.channel_settings(calibrate=False)
        try:  # the spelling only; whether this machine has the device is asked when the run starts
            parse_device(self.device)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        need(self.byzantine_fraction < 1, "byzantine_fraction must leave at least one honest node")
        for key in ("crash_nodes", "byzantine_nodes", "partition_nodes"):
            ids = getattr(self, key)
            need(all(0 <= i < self.nodes for i in ids), f"{key} must be node ids in 0..{self.nodes - 1}")
            need(len(set(ids)) == len(ids), f"{key} lists a node twice")
        need(self.byzantine_target < self.nodes, f"byzantine_target must be in 0..{self.nodes - 1}")
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

    def channel_settings(self, *, calibrate: bool = True) -> Any:
        """The run's compression and privacy settings (gossip/compression/channel.py), checked; with
        ``dp_epsilon``, sigma is calibrated over ``rounds * gossip_steps`` releases."""
        from phalanx.gossip.compression.channel import ChannelSettingsError, channel_settings

        try:
            return channel_settings(
                compress=self.compress,
                dp_clip=self.dp_clip,
                dp_sigma=self.dp_sigma,
                dp_epsilon=self.dp_epsilon,
                dp_delta=self.dp_delta,
                releases=max(1, self.rounds) * self.gossip_steps,
                calibrate=calibrate,
            )
        except ChannelSettingsError as exc:
            raise ConfigError(str(exc)) from None

    @property
    def num_byzantine(self) -> int:
        return len(self.byzantine_nodes) or round(self.byzantine_fraction * self.nodes)

    @property
    def num_crashed(self) -> int:
        return len(self.crash_nodes) or round(self.crash_fraction * (self.nodes - self.num_byzantine))

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


def from_mapping(data: dict[str, Any]) -> SimConfig:
    """A config from plain values (a parsed TOML document); unknown keys are errors."""
    fields_.reject_unknown(SimConfig, data, error=ConfigError)
    return SimConfig(**fields_.coerce(SimConfig, data, error=ConfigError))


def load_toml(path: Path) -> dict[str, Any]:
    return fields_.load_toml(path, error=ConfigError)


parse_value = fields_.parse_value


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
