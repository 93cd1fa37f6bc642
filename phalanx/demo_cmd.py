"""``phalanx demo``: the README's main job on the embedded data."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "demo", help="the README's main job: train on the embedded MNIST and print accuracy"
    )
    parser.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from phalanx.cli import main

    return main(["train", "--dataset", "mnist", "--model", "mlp", "--steps", "750"])
