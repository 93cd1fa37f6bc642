"""``phalanx node run``: one real node on a real network (py-libp2p on trio).

Settings come from defaults, then ``--config FILE`` (TOML), then flags; see :mod:`phalanx.node.config`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from phalanx.cli import Parser
from phalanx.node.config import help_of
from phalanx.options import add_channel_arguments, add_data_arguments, add_training_arguments, protocol_help

# Flags whose value is a list or a KEY=VALUE table, and how they map onto config keys.
_REPEATED = {
    "listen": "listen",
    "bootstrap": "bootstrap",
    "neighbour": "neighbours",
    "announce": "announce",
    "relay": "relay",
}
_PAIRS = {"rule_param": "rule_params", "attack_param": "attack_params", "protocol_param": "protocol_params"}


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


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
    # each flag's help and default is its NodeConfig field's (phalanx.node.config.help_of)
    net.add_argument("--listen", action="append", metavar="MULTIADDR", help=help_of("listen"))
    net.add_argument("--bootstrap", action="append", metavar="MULTIADDR", help=help_of("bootstrap"))
    net.add_argument("--neighbour", action="append", metavar="MULTIADDR", help=help_of("neighbours"))
    net.add_argument("--announce", action="append", metavar="MULTIADDR", help=help_of("announce"))
    net.add_argument("--alone", choices=("exit", "wait", "train"), help=help_of("alone"))
    for key in ("topology_file", "address_book", "key", "data_dir"):
        net.add_argument(_flag(key), type=Path, help=help_of(key))
    net.add_argument("--metrics-host", help=help_of("metrics_host"))
    net.add_argument("--metrics-port", type=int, help=help_of("metrics_port"))
    net.add_argument("--tensorboard", type=Path, help=help_of("tensorboard"))
    # joining a network (issue 14)
    join = p.add_argument_group("joining a network")
    join.add_argument("--degree", type=int, help=help_of("degree"))
    join.add_argument("--members-interval", type=float, help=help_of("members_interval"))
    join.add_argument("--max-members", type=int, help=help_of("max_members"))
    # Circuit Relay v2 (issue 14; node/relay.py)
    join.add_argument("--relay-service", action="store_true", help=help_of("relay_service"))
    join.add_argument("--relay", action="append", metavar="MULTIADDR", help=help_of("relay"))
    data = add_data_arguments(p)
    data.add_argument("--data", metavar="PATH", help=help_of("data"))
    data.add_argument("--nodes", type=int, help=help_of("nodes"))
    data.add_argument("--index", type=int, help=help_of("index"))
    add_training_arguments(p)
    add_channel_arguments(p)
    proto = p.add_argument_group("protocol")
    proto.add_argument("--protocol", help=protocol_help())
    proto.add_argument(
        "--protocol-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=help_of("protocol_params") + " (repeatable)",
    )
    proto.add_argument("--rule", help=help_of("rule"))
    proto.add_argument(
        "--rule-param", action="append", default=[], metavar="KEY=VALUE", help=help_of("rule_params")
    )
    for key, kind in (("local_steps", int), ("gossip_steps", int), ("round_timeout", float), ("rounds", int)):
        proto.add_argument(_flag(key), type=kind, help=help_of(key))
    behave = p.add_argument_group("behaviour")
    behave.add_argument("--byzantine", metavar="ATTACK", help=help_of("byzantine"))
    behave.add_argument(
        "--attack-param", action="append", default=[], metavar="KEY=VALUE", help=help_of("attack_params")
    )
    for key, kind in (
        ("attack_delay", float),
        ("eval_every", int),
        ("linger", float),
        ("ban_threshold", int),
        ("ban_window", float),
        ("ban_duration", float),
        ("stall_timeout", float),
    ):
        behave.add_argument(_flag(key), type=kind, help=help_of(key))
    behave.add_argument(
        "--fresh",
        action="store_true",
        help="start from round 0: move an existing checkpoint aside (the key, and so the peer id, stay)",
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
    say so in a log line; the previous generation (``checkpoint.prev.bin``) goes aside with it, or a
    fresh start would resume from it. Returns the new path, or None when there was no checkpoint."""
    import json
    import time

    from phalanx.node.checkpoint import FILENAME, previous_path

    current = data_dir / FILENAME
    previous = previous_path(current)
    if not current.exists():
        if previous.exists():  # only the older generation is left: move it, so nothing is resumed
            current = previous
        else:
            return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = current.with_name(f"{FILENAME}.{stamp}.old")
    n = 1
    while aside.exists():
        aside = current.with_name(f"{FILENAME}.{stamp}-{n}.old")
        n += 1
    current.rename(aside)
    if previous.exists():
        previous.rename(aside.with_name(aside.name.replace(".old", ".prev.old")))
    print(
        json.dumps({"event": "fresh", "moved": str(current), "to": str(aside)}, separators=(",", ":")),
        flush=True,
    )
    return aside
