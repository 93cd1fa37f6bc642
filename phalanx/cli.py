"""The command line: ``phalanx <command> ...``.

Each command lives in its own module under ``phalanx/`` and exposes ``register(subparsers)``, which adds
its parser and sets ``func``. Heavy imports (torch, trio, libp2p) happen inside the command functions so
that ``phalanx --help`` stays fast.

Bad input never shows a traceback: argparse errors and any ``ValueError`` or ``OSError`` raised while
validating the command's input print one line, ``phalanx <command>: error: ...``, and exit with status 2.
Set ``PHALANX_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from phalanx import __version__

# Modules under phalanx/ that each add one subcommand (see register()).
COMMAND_MODULES = (
    "phalanx.demo_cmd",
    "phalanx.train_cmd",
    "phalanx.node_cmd",
    "phalanx.net_cmd",
    "phalanx.sim_cmd",
    "phalanx.sweep_cmd",
)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def build_parser() -> Parser:
    parser = Parser(
        prog="phalanx",
        description="Peer-to-peer decentralized learning: real nodes over libp2p, a simulator, Byzantine attackers.",
    )
    parser.add_argument("--version", action="version", version=f"phalanx {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"phalanx {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:
        if os.environ.get("PHALANX_DEBUG"):
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"phalanx {args.command}: error: {message}", file=sys.stderr)
        return 2


def run() -> NoReturn:
    sys.exit(main())
