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
from typing import Any, NoReturn

from phalanx import __version__

# Modules under phalanx/ that each add one subcommand (see register()).
COMMAND_MODULES = (
    "phalanx.demo_cmd",
    "phalanx.train_cmd",
    "phalanx.pretrain_cmd",
    "phalanx.node_cmd",
    "phalanx.key_cmd",
    "phalanx.net_cmd",
    "phalanx.sim_cmd",
    "phalanx.sweep_cmd",
    "phalanx.compare_cmd",
    "phalanx.list_cmd",
)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(text: str, convert: type[int] | type[float], *, low: float, strict: bool) -> Any:
    """``text`` as a finite number of type ``convert`` that is > low (strict) or >= low."""
    noun = "a whole number" if convert is int else "a number"
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
    if not (value > low if strict else value >= low) or value == float("inf"):
        bound = f"{'>' if strict else '>='} {low:g}"
        raise argparse.ArgumentTypeError(
            f"expected {'a finite number' if convert is float else noun} {bound}, got {text}"
        )
    return value


def positive_int(text: str) -> int:
    return int(_number(text, int, low=1, strict=False))


def non_negative_int(text: str) -> int:
    return int(_number(text, int, low=0, strict=False))


def positive_float(text: str) -> float:
    return float(_number(text, float, low=0, strict=True))


def non_negative_float(text: str) -> float:
    return float(_number(text, float, low=0, strict=False))


def seed_list(text: str) -> list[int]:
    """``0,1,2`` as a list of distinct whole numbers."""
    try:
        seeds = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated seeds, got {text!r}")
    return seeds


def seeds_setting(value: Any) -> list[int]:
    from phalanx.sim.config import ConfigError

    if not isinstance(value, list) or not value or not all(type(v) is int for v in value):
        raise ConfigError("seeds must be a non-empty list of whole numbers")
    if len(set(value)) != len(value):
        raise ConfigError("seeds lists a seed twice")
    return list(value)


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
