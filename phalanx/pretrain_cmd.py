"""``phalanx pretrain``: train a model on data the nodes never see and write its frozen feature part.

The weights file (``--out``) holds the model's parameters and buffers outside its head, with a record of
how it was made (dataset, model, source, seed, epochs, test accuracy, the sha256 of its payload). Nodes load
it with ``--train-only head --features PATH``; on the same training pool they leave the source's samples out
of every shard, so pretraining and the nodes never share a sample (docs/transfer.md).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

from phalanx.cli import positive_float, positive_int
from phalanx.node.train_settings import default, help_of


def register(sub: Any) -> None:
    p = sub.add_parser(
        "pretrain",
        help="train a frozen feature part on data disjoint from the nodes' (for --train-only head)",
        description="Train a model on a held-out slice of the training pool (or on some classes) and write "
        "its non-head layers as a weights file for --train-only head --features PATH.",
    )
    p.add_argument("--dataset", default=default("dataset"), help=help_of("dataset"))
    p.add_argument("--model", default=default("model"), help=help_of("model"))
    p.add_argument(
        "--source",
        default="holdout:0.1",
        help="the pretraining samples: holdout:FRACTION (a seeded share of the training pool) or "
        "classes:LIST (every training sample of those classes, e.g. classes:0,1,2); the nodes leave them "
        "out (default: holdout:0.1)",
    )
    p.add_argument("--epochs", type=positive_int, default=5, help="passes over the source (default: 5)")
    p.add_argument("--lr", type=positive_float, default=default("lr"), help=help_of("lr"))
    p.add_argument("--momentum", type=float, default=default("momentum"), help=help_of("momentum"))
    p.add_argument(
        "--batch-size", type=positive_int, default=default("batch_size"), help=help_of("batch_size")
    )
    p.add_argument("--seed", type=int, default=default("seed"), help=help_of("seed"))
    p.add_argument(
        "--threads", type=positive_int, default=1, help="torch threads (default: 1, as phalanx sim's)"
    )
    p.add_argument("--out", type=Path, required=True, help="the weights file to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=run_pretrain)


def run_pretrain(args: argparse.Namespace) -> int:
    from phalanx import __version__
    from phalanx.node.datasets import load_dataset
    from phalanx.node.learner import Learner, TrainConfig
    from phalanx.node.models import check_model
    from phalanx.node.transfer import (
        frozen_state,
        head_name,
        indices_sha256,
        labels_fingerprint,
        parse_source,
        source_indices,
        write_weights,
    )

    parse_source(args.source)
    check_model(args.model)
    if args.out.exists() and not args.overwrite:
        raise ValueError(f"{args.out} exists; pass --overwrite to replace it")
    if not args.out.parent.is_dir():
        raise ValueError(f"{args.out.parent} is not a folder")
    import torch

    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.dataset)
    picked = source_indices(dataset.train_y.numpy(), args.source, seed=args.seed)
    config = TrainConfig(lr=args.lr, momentum=args.momentum, batch_size=args.batch_size)
    learner = Learner(dataset=dataset, shard=picked, model=args.model, config=config, seed=args.seed)
    head = head_name(learner.trainer.module, args.model)
    steps = args.epochs * math.ceil(len(picked) / args.batch_size)
    print(
        f"pretrain: model {args.model} on {dataset.name}, source {args.source}: {len(picked):,} of "
        f"{len(dataset.train_y):,} training samples, {args.epochs} epochs ({steps:,} steps); head {head!r}",
        flush=True,
    )
    start = time.perf_counter()
    loss = learner.train(steps)
    acc, test_loss = learner.evaluate()
    if not math.isfinite(loss):
        print(f"phalanx pretrain: error: training diverged (loss {loss}); lower --lr", file=sys.stderr)
        return 2
    learner.trainer.load(learner.state.params, learner.state.buffers)
    provenance = {
        "phalanx": __version__,
        "dataset": args.dataset,
        "dataset_name": dataset.name,
        "model": args.model,
        "head": head,
        "source": args.source,
        "source_samples": len(picked),
        "source_sha256": indices_sha256(picked),
        "train_labels_sha256": labels_fingerprint(dataset.train_y),
        "train_size": len(dataset.train_y),
        "seed": args.seed,
        "epochs": args.epochs,
        "steps": steps,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "test_accuracy": acc,
        "test_loss": test_loss,
    }
    digest = write_weights(args.out, frozen_state(learner.trainer.module, head), provenance)
    print(
        f"pretrain: test accuracy {acc:.4f} (whole model, loss {test_loss:.4f}) after {steps:,} steps in "
        f"{time.perf_counter() - start:.1f} s"
    )
    print(f"wrote {args.out} (sha256 {digest})")
    return 0
