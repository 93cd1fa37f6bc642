"""A node's settings: defaults, then a TOML file, then command-line flags (each overriding the one before).

Keys in the TOML file are the long flag names with ``_`` for ``-`` (``round_timeout = 5``); tables
``[rule_params]``, ``[protocol_params]`` and ``[attack_params]`` hold the rule's and the attack's keyword parameters. Every value is
checked here, and any problem raises :class:`ConfigError` (a ``ValueError``) with one line that names it.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A setting that cannot be used."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    # network and identity
    listen: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    bootstrap: tuple[str, ...] = ()
    announce: tuple[str, ...] = ()  # addresses to announce instead of the listen addresses
    alone: str = ""  # no neighbours: "exit", "wait" or "train"; "" = wait with --bootstrap, else exit
    key: Path | None = None  # default: DATA_DIR/node.key
    data_dir: Path = Path("phalanx-node")
    metrics_port: int = 0  # 0 picks a free port; -1 turns the endpoint off
    metrics_host: str = "127.0.0.1"
    # data, model, training
    dataset: str = "mnist"
    partition: str = "iid"
    nodes: int = 1
    index: int = 0
    seed: int = 0
    model: str = "mlp"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    sam_rho: float = 0.0
    # protocol
    protocol: str = "dpsgd"
    protocol_params: dict[str, Any] = field(default_factory=dict)
    rule: str = "mean"
    rule_params: dict[str, Any] = field(default_factory=dict)
    local_steps: int = 1
    gossip_steps: int = 1
    round_timeout: float = 10.0
    rounds: int = 0
    neighbours: tuple[str, ...] = ()
    topology_file: Path | None = None
    address_book: Path | None = None
    # behaviour
    byzantine: str = ""
    attack_params: dict[str, Any] = field(default_factory=dict)
    attack_delay: float = 0.5
    eval_every: int = 1
    linger: float = 1.0
    ban_threshold: int = 5
    ban_window: float = 60.0
    ban_duration: float = 300.0
    stall_timeout: float = 10.0

    @property
    def key_path(self) -> Path:
        return self.key if self.key is not None else self.data_dir / "node.key"


ALONE = ("", "exit", "wait", "train")

_INT_MIN = {
    "metrics_port": -1,
    "nodes": 1,
    "index": 0,
    "batch_size": 1,
    "local_steps": 0,
    "gossip_steps": 1,
    "rounds": 0,
    "eval_every": 0,
    "ban_threshold": 1,
    "seed": -(2**63),
}
_POSITIVE_FLOATS = {"lr", "round_timeout", "ban_window", "stall_timeout"}
_NON_NEGATIVE_FLOATS = {"momentum", "weight_decay", "sam_rho", "attack_delay", "linger", "ban_duration"}
_PATHS = {"key", "data_dir", "topology_file", "address_book"}
_LISTS = {"listen", "bootstrap", "neighbours", "announce"}
_TABLES = {"rule_params", "attack_params", "protocol_params"}
_STRINGS = {"dataset", "partition", "model", "protocol", "rule", "byzantine", "metrics_host", "alone"}


def _coerce(key: str, value: Any) -> Any:
    name = key.replace("_", "-")
    if key in _INT_MIN:
        if type(value) is not int:
            raise ConfigError(f"{name} must be a whole number, got {value!r}")
        if value < _INT_MIN[key]:
            raise ConfigError(f"{name} must be >= {_INT_MIN[key]}, got {value}")
        return value
    if key in _POSITIVE_FLOATS or key in _NON_NEGATIVE_FLOATS:
        if type(value) not in (int, float) or not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        if key in _POSITIVE_FLOATS and not value > 0:
            raise ConfigError(f"{name} must be > 0, got {value}")
        if value < 0:
            raise ConfigError(f"{name} must be >= 0, got {value}")
        return float(value)
    if key in _PATHS:
        if value is None:
            return None
        if not isinstance(value, (str, Path)) or not str(value):
            raise ConfigError(f"{name} must be a path, got {value!r}")
        return Path(value).expanduser()
    if key in _LISTS:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{name} must be a list of multiaddr strings")
        return tuple(value)
    if key in _TABLES:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{name} must be a table of KEY = VALUE")
        return dict(value)
    if key in _STRINGS:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    raise ConfigError(f"unknown setting {name!r}")  # pragma: no cover - every field is in a table above


def parse_value(text: str) -> Any:
    """A KEY=VALUE flag's value: a TOML scalar when it parses as one (1, 0.5, true), else the string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_pairs(pairs: list[str], flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = parse_value(value.strip())
    return out


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None


def build(file_values: dict[str, Any], flag_values: dict[str, Any]) -> NodeConfig:
    """Defaults, overridden by ``file_values`` (a parsed TOML file), overridden by ``flag_values``."""
    known = {f.name for f in fields(NodeConfig)}
    values: dict[str, Any] = {}
    for source in (file_values, flag_values):
        for key, value in source.items():
            key = key.replace("-", "_")
            if key not in known:
                raise ConfigError(f"unknown setting {key!r}")
            if key in _TABLES and key in values:
                values[key] = {**values[key], **_coerce(key, value)}
            else:
                values[key] = _coerce(key, value)
    config = NodeConfig(**values)
    if config.index >= config.nodes:
        raise ConfigError(
            f"index {config.index} out of range for {config.nodes} nodes (0..{config.nodes - 1})"
        )
    if config.alone not in ALONE:
        raise ConfigError(f"alone must be one of {', '.join(a for a in ALONE if a)}, got {config.alone!r}")
    if (config.topology_file is None) != (config.address_book is None):
        raise ConfigError("topology-file and address-book go together")
    return config


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
