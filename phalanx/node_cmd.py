"""``phalanx node run``: one real node on a real network (py-libp2p on trio).

Settings come from defaults, then ``--config FILE`` (TOML), then flags; see :mod:`phalanx.node.config`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from phalanx.cli import Parser
from phalanx.options import add_data_arguments, add_training_arguments, protocol_help

# Flags whose value is a list or a KEY=VALUE table, and how they map onto config keys.
_REPEATED = {"listen": "listen", "bootstrap": "bootstrap", "neighbour": "neighbours", "announce": "announce"}
_PAIRS = {"rule_param": "rule_params", "attack_param": "attack_params", "protocol_param": "protocol_params"}


def register(sub: Any) -> None:
    node = sub.add_parser("node", help="run a real node (libp2p on trio)")
    node_sub = node.add_subparsers(dest="node_command", metavar="COMMAND", parser_class=Parser)
    p = node_sub.add_parser(
        "run",
        help="run one node until its rounds are done",
        description="Run one phalanx node: train on its shard, gossip models with its neighbours over libp2p.",
    )
    p.add_argument("--config", type=Path, help="TOML file of settings (flags override it)")
    net = p.add_argument_group("network and identity")
    net.add_argument(
        "--listen", action="append", metavar="MULTIADDR", help="listen address (default /ip4/127.0.0.1/tcp/0)"
    )
    net.add_argument(
        "--bootstrap", action="append", metavar="MULTIADDR", help="peer to dial at start (repeatable)"
    )
    net.add_argument(
        "--neighbour",
        action="append",
        metavar="MULTIADDR",
        help="neighbour /ip4/.../tcp/PORT/p2p/ID (repeatable)",
    )
    net.add_argument(
        "--announce",
        action="append",
        metavar="MULTIADDR",
        help="address to announce instead of the listen addresses (repeatable); by default a wildcard "
        "listen address (0.0.0.0, ::) is announced as this host's interface addresses",
    )
    net.add_argument(
        "--alone",
        choices=("exit", "wait", "train"),
        help="with no neighbours: exit with an error, wait for a peer to connect, or train alone "
        "(default: wait with --bootstrap, else exit)",
    )
    net.add_argument("--topology-file", type=Path, help="edge list 'i j' per line (with --address-book)")
    net.add_argument("--address-book", type=Path, help="TOML [peers] table: index = multiaddr")
    net.add_argument(
        "--key", type=Path, help="ed25519 key file, created on first start (default DATA_DIR/node.key)"
    )
    net.add_argument("--data-dir", type=Path, help="checkpoint and key directory (default ./phalanx-node)")
    net.add_argument("--metrics-host", help="address the metrics endpoint listens on (default 127.0.0.1)")
    net.add_argument(
        "--metrics-port", type=int, help="Prometheus /metrics and JSON /status port; 0 = free port, -1 = off"
    )
    add_data_arguments(p)
    p.add_argument_group("data").add_argument("--nodes", type=int, help="number of shards (default 1)")
    p.add_argument("--index", type=int, help="this node's shard, 0-based (default 0)")
    add_training_arguments(p)
    proto = p.add_argument_group("protocol")
    proto.add_argument("--protocol", help=protocol_help())
    proto.add_argument(
        "--protocol-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="protocol parameter (modest: s, a, ...; el-*: s)",
    )
    proto.add_argument("--rule", help="aggregation rule (default mean = D-PSGD mixing)")
    proto.add_argument(
        "--rule-param", action="append", default=[], metavar="KEY=VALUE", help="rule parameter"
    )
    proto.add_argument("--local-steps", type=int, help="local SGD steps per round (default 1)")
    proto.add_argument("--gossip-steps", type=int, help="gossip exchanges per round (default 1)")
    proto.add_argument("--round-timeout", type=float, help="seconds to wait for neighbours (default 10)")
    proto.add_argument("--rounds", type=int, help="stop after this many rounds; 0 = run until stopped")
    behave = p.add_argument_group("behaviour")
    behave.add_argument(
        "--byzantine",
        metavar="ATTACK",
        help="be an attacker: an aggregation attack (alie, ...), "
        "label-flip, silent, equivocation or dissensus",
    )
    behave.add_argument(
        "--attack-param", action="append", default=[], metavar="KEY=VALUE", help="attack parameter"
    )
    behave.add_argument(
        "--attack-delay", type=float, help="seconds an attacker waits for honest vectors (default 0.5)"
    )
    behave.add_argument(
        "--fresh",
        action="store_true",
        help="start from round 0: move an existing checkpoint aside (the key, and so the peer id, stay)",
    )
    behave.add_argument("--eval-every", type=int, help="evaluate every N rounds; 0 = never (default 1)")
    behave.add_argument(
        "--linger", type=float, help="seconds to keep answering after the last round (default 1)"
    )
    behave.add_argument("--ban-threshold", type=int, help="invalid messages that ban a peer (default 5)")
    behave.add_argument("--ban-window", type=float, help="... within this many seconds (default 60)")
    behave.add_argument("--ban-duration", type=float, help="seconds a ban lasts (default 300)")
    behave.add_argument(
        "--stall-timeout", type=float, help="seconds a stream may stall inside a frame (default 10)"
    )
    # Only flags the user gave override the file: every default is "not given".
    for action in p._actions:
        if action.dest not in ("help", "config", "rule_param", "attack_param", "protocol_param", "fresh"):
            action.default = argparse.SUPPRESS
    p.set_defaults(func=run, command="node run")
    node.set_defaults(func=lambda args: (node.print_help(), 2)[1])


def config_from_args(args: argparse.Namespace) -> Any:
    from phalanx.node import config as cfg

    skip = ("func", "command", "node_command", "config", "fresh")
    flags = {k: v for k, v in vars(args).items() if k not in skip}
    for flag, key in _REPEATED.items():
        if flag in flags:
            flags[key] = flags.pop(flag)
    for flag, key in _PAIRS.items():
        pairs = flags.pop(flag, [])
        if pairs:
            flags[key] = cfg.parse_pairs(pairs, "--" + flag.replace("_", "-"))
    file_values = cfg.load_toml(args.config) if args.config else {}
    return cfg.build(file_values, flags)


def run(args: argparse.Namespace) -> int:
    from phalanx.node.app import run_node

    config = config_from_args(args)
    if args.fresh:
        move_checkpoint_aside(config.data_dir)
    return run_node(config)


def move_checkpoint_aside(data_dir: Path) -> Path | None:
    """Rename DATA_DIR's checkpoint to ``checkpoint.bin.YYYYmmdd-HHMMSS.old`` (never overwriting one) and
    say so in a log line; returns the new path, or None when there was no checkpoint."""
    import json
    import time

    from phalanx.node.checkpoint import FILENAME

    current = data_dir / FILENAME
    if not current.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = current.with_name(f"{FILENAME}.{stamp}.old")
    n = 1
    while aside.exists():
        aside = current.with_name(f"{FILENAME}.{stamp}-{n}.old")
        n += 1
    current.rename(aside)
    print(
        json.dumps({"event": "fresh", "moved": str(current), "to": str(aside)}, separators=(",", ":")),
        flush=True,
    )
    return aside
