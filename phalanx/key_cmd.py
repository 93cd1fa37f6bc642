"""``phalanx key new PATH`` and ``phalanx key show PATH``: a node's identity before the node runs.

``key new`` writes a fresh ed25519 key (mode 0600) and prints its peer id; it never replaces a key unless
told to (``--force``), because a replaced key is a new peer id. ``key show`` prints the peer id of a key file
and the addresses a node with that key would announce for the given ``--listen`` / ``--announce`` flags (the
same rules as ``phalanx node run``), each with its ``/p2p/PEER_ID``: what other nodes pass as ``--neighbour``
or ``--bootstrap``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from phalanx.cli import Parser

DEFAULT_LISTEN = "/ip4/127.0.0.1/tcp/0"


def register(sub: Any) -> None:
    key = sub.add_parser("key", help="make a node key, show its peer id and announced addresses")
    key_sub = key.add_subparsers(dest="key_command", metavar="COMMAND", parser_class=Parser)
    new = key_sub.add_parser(
        "new",
        help="write a fresh ed25519 key (mode 0600) and print its peer id",
        description="Write a fresh ed25519 node key to PATH (mode 0600) and print its peer id.",
    )
    new.add_argument("path", type=Path, metavar="PATH")
    new.add_argument(
        "--force", action="store_true", help="replace an existing key (its peer id is lost for good)"
    )
    new.set_defaults(func=run_new, command="key new")
    show = key_sub.add_parser(
        "show",
        help="print a key's peer id and the addresses a node would announce",
        description="Print the peer id of the key at PATH and the addresses a node with this key would "
        "announce (with /p2p/PEER_ID), for the given --listen and --announce, as 'phalanx node run' does.",
    )
    show.add_argument("path", type=Path, metavar="PATH")
    show.add_argument(
        "--listen", action="append", metavar="MULTIADDR", help=f"listen address (default {DEFAULT_LISTEN})"
    )
    show.add_argument(
        "--announce", action="append", default=[], metavar="MULTIADDR", help="announce this address instead"
    )
    show.add_argument("--json", action="store_true", help="one JSON object: peer_id, addresses, notes")
    show.set_defaults(func=run_show, command="key show")
    key.set_defaults(func=lambda args: (key.print_help(), 2)[1])


def run_new(args: argparse.Namespace) -> int:
    from phalanx.node.identity import create_key, load_key, peer_id_of

    path: Path = args.path.expanduser()
    if path.is_dir():
        raise ValueError(f"{path} is a directory; give the key file's path")
    if path.exists() and not args.force:
        try:
            old = f" (peer id {peer_id_of(load_key(path))})"
        except (ValueError, OSError):
            old = ""
        raise ValueError(f"key file {path} exists{old}; --force replaces it and its peer id is lost")
    key = create_key(path, overwrite=args.force)
    print(peer_id_of(key))
    return 0


def run_show(args: argparse.Namespace) -> int:
    from phalanx.node.addresses import announced, with_peer_id
    from phalanx.node.identity import load_key, peer_id_of

    path: Path = args.path.expanduser()
    if not path.exists():
        raise ValueError(f"key file {path} does not exist; make one with 'phalanx key new {path}'")
    peer_id = peer_id_of(load_key(path))
    listen = args.listen or [DEFAULT_LISTEN]
    for addr in listen:
        _check_listen(addr)
    addrs = with_peer_id(announced(listen, args.announce), peer_id)
    notes = []
    if not args.announce and any(a.split("/p2p/")[0].endswith("/tcp/0") for a in addrs):
        notes.append("port 0 is chosen when the node starts: listen on a fixed port to know it now")
    if not addrs:
        notes.append("no interface address to announce for a wildcard listen address: use --announce")
    if args.json:
        print(json.dumps({"peer_id": peer_id, "addresses": addrs, "notes": notes}))
        return 0
    print(f"peer id  {peer_id}")
    for addr in addrs:
        print(f"address  {addr}")
    for note in notes:
        print(f"note     {note}")
    return 0


def _check_listen(addr: str) -> None:
    import multiaddr

    try:
        multiaddr.Multiaddr(addr)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"bad listen multiaddr {addr!r}: {reason}") from None
