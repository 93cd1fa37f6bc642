"""The settings of local training, written once: each one's default, bounds and help text.

:class:`~phalanx.node.learner.TrainConfig` (the learner), :class:`~phalanx.node.config.NodeConfig`
(``phalanx node run``), :class:`~phalanx.sim.config.SimConfig` (``phalanx sim``) and the CLI's data and
training flags (``phalanx train``, ``net up``) all take them from here, so a default such as the learning
rate cannot drift between the worlds. Bounds and help are dataclass field metadata, read by
:mod:`phalanx.gossip.fields`. This module imports nothing heavy: building the CLI's parser reads it.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

TRAINING: dict[str, tuple[Any, dict[str, Any]]] = {
    "seed": (0, {"help": "random seed: the same seed gives the same run"}),
    "dataset": (
        "mnist",
        {
            "help": "mnist (embedded, 8,000/2,000), blobs, idx:PATH, cifar10:PATH, cifar100:PATH, npz:PATH, "
            "csv:PATH[:label=COL], or a loader as module:function; add :norm=train|none|MEAN/STD (docs/data.md)"
        },
    ),
    "partition": (
        "iid",
        {
            "help": "iid, iid:relays=FRACTION (that fraction of nodes gets no data), dirichlet:ALPHA, shards:K, "
            "or clusters:G / clusters:PATH (each cluster of nodes its own classes: dumbbell cliques)"
        },
    ),
    "model": (
        "mlp",
        {
            "help": "logreg, mlp (784-64-10), cnn, cnn-dropout, or a factory as module:attr "
            "(e.g. examples.resnet8:resnet8)"
        },
    ),
    "lr": (0.05, {"help": "learning rate", "gt": 0, "finite": True}),
    "momentum": (0.9, {"help": "SGD momentum", "min": 0, "lt": 1}),
    "weight_decay": (0.0, {"help": "L2 weight decay", "min": 0, "finite": True}),
    "batch_size": (32, {"help": "batch size", "min": 1}),
    "buffers": (
        "average",
        {
            "help": "model buffers (BatchNorm running statistics): average (travel and mix like parameters), "
            "local (each node keeps its own), or per kind, e.g. float=average,int=local"
        },
    ),
    "sam_rho": (
        0.0,
        {
            "help": "sharpness-aware minimisation radius (DFedSAM), around any optimizer; 0 = off",
            "min": 0,
            "finite": True,
        },
    ),
    # bring your own optimiser, loss and device (issue 16): the API's choices, as settings too
    "optimizer": (
        "sgd",
        {
            "help": "sgd (with --momentum), adam or adamw (betas 0.9, 0.999; adam adds --weight-decay to "
            "the gradient, adamw decays the weights)",
            "choices": ("sgd", "adam", "adamw"),
        },
    ),
    "loss_fn": (
        "cross-entropy",
        {
            "help": "the training loss: cross-entropy, or a loss as module:attr (a function or nn.Module class)"
        },
    ),
    "device": (
        "cpu",
        {"help": "where training runs: auto, cpu, cuda, cuda:N or mps (auto: cuda, else mps, else cpu)"},
    ),
    # transfer learning (docs/transfer.md): train, send and aggregate only the model's head
    "train_only": (
        "all",
        {
            "help": "all (the whole model) or head (only the final layer: a frozen feature part from "
            "--features, or its seeded random initialisation without it; docs/transfer.md)",
            "choices": ("all", "head"),
        },
    ),
    "features": (
        "",
        {"help": "the frozen feature part for --train-only head: a weights file written by phalanx pretrain"},
    ),
    # held-out local evaluation (issue 15): the samples an Evaluate action is answered on
    "eval_holdout": (
        0,
        {
            "help": "hold out the last N samples of every node's shard: never trained on, and the samples "
            "Evaluate actions (Bristle's integrator) are answered on; 0 = none held out (Evaluate then uses "
            "the first samples of the shard, which the node also trains on)",
            "min": 0,
        },
    ),
    # ---- compressed exchange and differential privacy (issue 18; docs/compression.md)
    "compress": (
        "",
        {
            "help": "codec for model messages, difference-coded against a public copy: fp16, bf16, int8[:CHUNK], "
            "topk:F, randk:F, lowrank:R, seeds:K; empty = float32 as is"
        },
    ),
    "dp_clip": (
        0.0,
        {
            "help": "differential privacy: clip each sent update to this L2 norm C (0 = off)",
            "min": 0,
            "finite": True,
        },
    ),
    "dp_sigma": (
        0.0,
        {
            "help": "differential privacy: Gaussian noise multiplier sigma (noise std sigma*C)",
            "min": 0,
            "finite": True,
        },
    ),
    "dp_epsilon": (
        0.0,
        {
            "help": "differential privacy: pick sigma to reach this epsilon after the planned rounds",
            "min": 0,
            "finite": True,
        },
    ),
    "dp_delta": (1e-5, {"help": "differential privacy: delta", "gt": 0, "lt": 1}),
}


def setting(name: str) -> Any:
    """A dataclass field for the training setting ``name``: its default, bounds and help."""
    value, metadata = TRAINING[name]
    return field(default=value, metadata=metadata)


def default(name: str) -> Any:
    return TRAINING[name][0]


def help_of(name: str) -> str:
    """The help text of ``name``, with its default: ``learning rate (default: 0.05)``."""
    value, metadata = TRAINING[name]
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{metadata['help']} (default: {shown})"
