"""Command-line options shared by the commands that train (train, sim, node run)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from phalanx.cli import non_negative_float, positive_float, positive_int

if TYPE_CHECKING:
    from phalanx.node.learner import TrainConfig


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset",
        default="mnist",
        help="mnist (embedded, 8,000/2,000), blobs, idx:PATH, cifar10:PATH, cifar100:PATH, npz:PATH, "
        "csv:PATH[:label=COL], or a loader as module:function; add :norm=train|none|MEAN/STD "
        "(docs/data.md) (default: mnist)",
    )
    group.add_argument("--partition", default="iid", help="iid, dirichlet:ALPHA or shards:K (default: iid)")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and local training")
    group.add_argument(
        "--model",
        default="mlp",
        help="logreg, mlp (784-64-10), cnn, cnn-dropout, or a factory as module:attr "
        "(e.g. examples.resnet8:resnet8) (default: mlp)",
    )
    group.add_argument("--lr", type=positive_float, default=0.05, help="learning rate (default: 0.05)")
    group.add_argument("--momentum", type=non_negative_float, default=0.9, help="SGD momentum (default: 0.9)")
    group.add_argument(
        "--weight-decay", type=non_negative_float, default=0.0, help="L2 weight decay (default: 0)"
    )
    group.add_argument("--batch-size", type=positive_int, default=32, help="batch size (default: 32)")
    group.add_argument(
        "--sam-rho", type=non_negative_float, default=0.0, help="sharpness-aware minimisation radius; 0 = off"
    )
    group.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def train_config_from(args: argparse.Namespace) -> TrainConfig:
    from phalanx.node.learner import TrainConfig

    return TrainConfig.from_settings(args)


class LazyHelp(str):
    """A help text computed only when help is shown (argparse formats help with ``help % params``), so
    that building the parser never imports torch: ``--protocol``'s help lists the protocol registry."""

    def __new__(cls, make: Callable[[], str]) -> LazyHelp:
        obj = super().__new__(cls, "(computed)")
        obj._make = make  # type: ignore[attr-defined]
        return obj

    def __mod__(self, params: object) -> str:
        return self._make().replace("%", "%%") % params  # type: ignore[attr-defined,no-any-return]


def protocol_help() -> LazyHelp:
    def make() -> str:
        from phalanx.gossip import registry

        return f"the protocol (default dpsgd); {registry.help_text()}"

    return LazyHelp(make)
