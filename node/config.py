"""A node's settings: defaults, then a TOML file, then command-line flags (each overriding the one before).

Keys in the TOML file are the long flag names with ``_`` for ``-`` (``round_timeout = 5``); tables
``[rule_params]``, ``[protocol_params]`` and ``[attack_params]`` hold the rule's and the attack's keyword parameters. Every value is
coerced from its field's type (:func:`phalanx.gossip.fields.coerce`) and checked against its field's bounds, and
any problem raises :class:`ConfigError` (a ``ValueError``, the simulator's too) with one line that names it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from phalanx.gossip import fields as fields_
from phalanx.node.device import parse_device
from phalanx.node.train_settings import setting

ConfigError = fields_.ConfigError  # one class for the node and the simulator (phalanx.gossip.fields)


def _f(default: Any, help: str, **bounds: Any) -> Any:
    """A field with its default, its help (``phalanx node run --help`` reads it) and its bounds."""
    return field(default=default, metadata={"help": help, **bounds})


_POSITIVE = {"gt": 0, "finite": True}
_SECONDS = {"min": 0, "finite": True}


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """A node's settings. Each field's metadata holds its help and bounds; the training settings come from
    :mod:`phalanx.node.train_settings`, shared with the simulator."""

    # network and identity
    listen: tuple[str, ...] = _f(("/ip4/127.0.0.1/tcp/0",), "listen multiaddr (repeatable)")
    bootstrap: tuple[str, ...] = _f((), "peer to dial at start (repeatable)")
    announce: tuple[str, ...] = _f(
        (),
        "address to announce instead of the listen addresses (repeatable); by default a wildcard listen "
        "address (0.0.0.0, ::) is announced as this host's interface addresses",
    )
    alone: str = _f(
        "",
        "with no neighbours: exit (an error), wait (for a peer to connect) or train (alone); "
        "default: wait with --bootstrap, else exit",
    )
    key: Path | None = field(
        default=None,
        metadata={"help": "ed25519 key file, created on first start (default: DATA_DIR/node.key)"},
    )
    data_dir: Path = field(default=Path("phalanx-node"), metadata={"help": "checkpoint and key directory"})
    metrics_port: int = _f(0, "Prometheus /metrics and JSON /status port; 0 = a free port, -1 = off", min=-1)
    tensorboard: Path | None = field(
        default=None,
        metadata={
            "help": "write each round's scalars as TensorBoard events into this folder (phalanx[tensorboard])"
        },
    )
    metrics_host: str = _f("127.0.0.1", "address the metrics endpoint listens on")
    # data, model, training
    dataset: str = setting("dataset")
    partition: str = setting("partition")
    nodes: int = _f(1, "number of shards", min=1)
    index: int = _f(0, "this node's shard, 0-based", min=0)
    seed: int = setting("seed")
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
    # protocol
    protocol: str = _f("dpsgd", "the protocol")
    protocol_params: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "protocol parameter (modest: s, a, ...; el-*: s)"}
    )
    rule: str = _f("mean", "aggregation rule (mean = D-PSGD mixing)")
    rule_params: dict[str, Any] = field(default_factory=dict, metadata={"help": "rule parameter"})
    local_steps: int = _f(1, "local SGD steps per round", min=0)
    gossip_steps: int = _f(1, "gossip exchanges per round", min=1)
    round_timeout: float = _f(10.0, "seconds to wait for neighbours", **_POSITIVE)
    rounds: int = _f(0, "stop after this many rounds; 0 = run until stopped", min=0)
    neighbours: tuple[str, ...] = _f((), "neighbour /ip4/.../tcp/PORT/p2p/ID (repeatable)")
    topology_file: Path | None = field(
        default=None, metadata={"help": "edge list 'i j' per line (with --address-book)"}
    )
    address_book: Path | None = field(
        default=None, metadata={"help": "TOML [peers] table: index = multiaddr"}
    )
    # behaviour
    byzantine: str = _f(
        "", "be an attacker: an aggregation attack (alie, ...), label-flip, silent, equivocation or dissensus"
    )
    attack_params: dict[str, Any] = field(default_factory=dict, metadata={"help": "attack parameter"})
    attack_delay: float = _f(0.5, "seconds an attacker waits for honest vectors", **_SECONDS)
    eval_every: int = _f(1, "evaluate every N rounds; 0 = never", min=0)
    linger: float = _f(1.0, "seconds to keep answering after the last round", **_SECONDS)
    ban_threshold: int = _f(5, "invalid messages that ban a peer", min=1)
    ban_window: float = _f(60.0, "... within this many seconds", **_POSITIVE)
    ban_duration: float = _f(300.0, "seconds a ban lasts", **_SECONDS)
    stall_timeout: float = _f(10.0, "seconds a stream may stall inside a frame", **_POSITIVE)
    # joining a network (issue 14): membership exchange, a chosen overlay, a node's own data
    degree: int = _f(
        0,
        "D-PSGD on a joined network: keep this many neighbours chosen from the members the node knows "
        "(and take in members that choose it); 0 = the fixed --neighbour list",
        min=0,
    )
    data: str = _f(
        "",
        "this node's own dataset (a file or folder any loader reads: DIR of IDX files, FILE.npz, FILE.csv, "
        "or KIND:PATH); replaces --dataset/--nodes/--index",
    )
    members_interval: float = _f(2.0, "seconds between two membership exchanges", **_POSITIVE)
    max_members: int = _f(1024, "the most members a node keeps (and takes from one offer)", min=1)
    # Circuit Relay v2 (issue 14; node/relay.py)
    relay_service: bool = _f(False, "relay for others: serve Circuit Relay v2 reservations and circuits")
    relay: tuple[str, ...] = _f(
        (),
        "relay /ip4/.../tcp/PORT/p2p/ID to reserve a slot on (repeatable), for a node others cannot dial; "
        "it announces RELAY/p2p-circuit/p2p/OWN_ID",
    )

    def __post_init__(self) -> None:
        fields_.check_bounds(self, error=ConfigError)
        self.channel_settings(calibrate=False)
        try:  # the spelling only; whether this machine has the device is asked when the run starts
            parse_device(self.device)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        for key in _LISTS:
            if not all(isinstance(v, str) and v for v in getattr(self, key)):
                raise ConfigError(f"{key} must be a list of multiaddr strings")
        if self.index >= self.nodes:
            raise ConfigError(f"index {self.index} out of range for {self.nodes} nodes (0..{self.nodes - 1})")
        if (self.topology_file is None) != (self.address_book is None):
            raise ConfigError("topology-file and address-book go together")
        if self.data and self.nodes > 1:
            raise ConfigError("--data is this node's own dataset: it does not take --nodes/--index shards")
        if self.alone not in ALONE:
            raise ConfigError(f"alone must be one of {', '.join(a for a in ALONE if a)}, got {self.alone!r}")

    def channel_settings(self, *, calibrate: bool = True) -> Any:
        """The run's compression and privacy settings (gossip/compression/channel.py), checked; with
        ``dp_epsilon``, sigma is calibrated over ``rounds * gossip_steps`` releases."""
        from phalanx.gossip.compression.channel import ChannelSettingsError, channel_settings

        if self.dp_epsilon and not self.rounds:
            raise ConfigError("--dp-epsilon spends epsilon over the planned rounds: give --rounds N")
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
    def key_path(self) -> Path:
        return self.key if self.key is not None else self.data_dir / "node.key"


_LISTS = ("listen", "bootstrap", "neighbours", "announce", "relay")
ALONE = ("", "exit", "wait", "train")
_TABLES = ("rule_params", "attack_params", "protocol_params")


def default_of(key: str) -> Any:
    """The default of setting ``key`` (for a command that passes it on to nodes, such as ``net up``)."""
    return next(f for f in fields(NodeConfig) if f.name == key).default


def help_of(key: str) -> str:
    """The help of setting ``key`` with its default, for its flag."""
    return fields_.help_with_default(next(f for f in fields(NodeConfig) if f.name == key))


parse_value = fields_.parse_value


def parse_pairs(pairs: list[str], flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = parse_value(value.strip())
    return out


def load_toml(path: Path) -> dict[str, Any]:
    return fields_.load_toml(path, error=ConfigError)


def build(file_values: dict[str, Any], flag_values: dict[str, Any]) -> NodeConfig:
    """Defaults, overridden by ``file_values`` (a parsed TOML file), overridden by ``flag_values``
    (tables merge key by key); every value coerced by :func:`phalanx.gossip.fields.coerce`."""
    values: dict[str, Any] = {}
    for source in (file_values, flag_values):
        data = {key.replace("-", "_"): value for key, value in source.items()}
        fields_.reject_unknown(NodeConfig, data, error=ConfigError)
        for key in _LISTS:  # one multiaddr may stand for a list of one
            if isinstance(data.get(key), str):
                data[key] = [data[key]]
        for key, value in fields_.coerce(NodeConfig, data, error=ConfigError).items():
            values[key] = {**values[key], **value} if key in _TABLES and key in values else value
    return NodeConfig(**values)


def neighbours_from_files(topology: Path, address_book: Path, index: int) -> tuple[str, ...]:
    """This node's neighbours' multiaddrs from an edge list (``i j`` per line, ``#`` comments) and an
    address book (TOML ``[peers]`` table: ``"0" = "/ip4/.../p2p/..."``)."""
    edges: set[int] = set()
    for number, line in enumerate(topology.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ConfigError(f"{topology}:{number}: expected two node indices, got {line!r}")
        a, b = int(parts[0]), int(parts[1])
        if a == index and b != index:
            edges.add(b)
        elif b == index and a != index:
            edges.add(a)
    peers = load_toml(address_book).get("peers")
    if not isinstance(peers, dict):
        raise ConfigError(f"{address_book}: needs a [peers] table of index = multiaddr")
    out = []
    for j in sorted(edges):
        addr = peers.get(str(j))
        if not isinstance(addr, str):
            raise ConfigError(f"{address_book}: no address for node {j}")
        out.append(addr)
    return tuple(out)
