"""Command-line options shared by the commands that train (train, net up, node run); their defaults and help
come from :mod:`phalanx.node.train_settings`, which the node's and the simulator's configs read too."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from phalanx.cli import non_negative_float, non_negative_int, positive_float, positive_int
from phalanx.node.train_settings import default, help_of

if TYPE_CHECKING:
    from phalanx.node.learner import TrainConfig


def _add(group: Any, name: str, kind: Callable[[str], Any] = str) -> None:
    """The flag of training setting ``name``: default and help from :mod:`phalanx.node.train_settings`."""
    group.add_argument("--" + name.replace("_", "-"), type=kind, default=default(name), help=help_of(name))


def add_data_arguments(parser: argparse.ArgumentParser) -> Any:
    """The data flags, in a group "data" that is returned (a command may add its own data flags)."""
    group = parser.add_argument_group("data")
    _add(group, "dataset")
    _add(group, "partition")
    return group


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model and local training")
    _add(group, "model")
    _add(group, "lr", positive_float)
    _add(group, "momentum", non_negative_float)
    _add(group, "weight_decay", non_negative_float)
    _add(group, "batch_size", positive_int)
    _add(group, "sam_rho", non_negative_float)
    _add(group, "buffers")
    # transfer learning (docs/transfer.md)
    group.add_argument(
        "--train-only", choices=("all", "head"), default=default("train_only"), help=help_of("train_only")
    )
    _add(group, "features")
    # held-out local evaluation (issue 15): what Evaluate actions (Bristle) are answered on
    _add(group, "eval_holdout", non_negative_int)
    # bring your own optimiser, loss and device (issue 16)
    _add(group, "optimizer")
    _add(group, "loss_fn")
    _add(group, "device")
    _add(group, "seed", int)


def add_channel_arguments(parser: argparse.ArgumentParser) -> None:
    """``--compress`` and the differential-privacy flags (issue 18; docs/compression.md)."""
    group = parser.add_argument_group("compressed exchange and differential privacy")
    _add(group, "compress")
    _add(group, "dp_clip", non_negative_float)
    _add(group, "dp_sigma", non_negative_float)
    _add(group, "dp_epsilon", non_negative_float)
    _add(group, "dp_delta", positive_float)


#: the settings add_channel_arguments adds, for commands that hand them on (net up -> node run)
CHANNEL_SETTINGS = ("compress", "dp_clip", "dp_sigma", "dp_epsilon", "dp_delta")


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


def topology_help(default: str | None = None) -> LazyHelp:
    """``--topology``'s help: the topologies of the registry (built-in and plug-ins), listed when shown."""

    def make() -> str:
        from phalanx.sim import topology

        tail = f" (default: {default})" if default else ""
        return f"the communication graph{tail}: {topology.help_text()}"

    return LazyHelp(make)
