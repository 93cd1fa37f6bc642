"""``phalanx train``: the centralised baseline — one node trains on its data and reports test accuracy."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from phalanx.cli import non_negative_int, positive_int
from phalanx.options import add_data_arguments, add_training_arguments, train_config_from


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "train", help="train one model locally (centralised baseline) and print its accuracy"
    )
    add_data_arguments(parser)
    add_training_arguments(parser)
    parser.add_argument("--steps", type=positive_int, default=750, help="local SGD steps (default: 750)")
    parser.add_argument(
        "--eval-every", type=positive_int, default=250, help="evaluate every N steps (default: 250)"
    )
    parser.add_argument(
        "--nodes", type=positive_int, default=1, help="split the data across N nodes (default: 1)"
    )
    parser.add_argument(
        "--index", type=non_negative_int, default=0, help="train on this node's shard (default: 0)"
    )
    parser.add_argument("--flip-labels", action="store_true", help="poison the shard by label flipping")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from phalanx.node.datasets import load_dataset
    from phalanx.node.learner import Learner
    from phalanx.node.transfer import check_features, partition_for

    config = train_config_from(args)
    dataset = load_dataset(args.dataset)
    features = check_features(args, dataset)  # --train-only head: the frozen part's samples stay out
    shards = partition_for(
        dataset, args.nodes, args.partition, seed=args.seed, excluded=features.excluded if features else None
    )
    if args.index >= args.nodes:
        raise ValueError(f"node index {args.index} out of range for {args.nodes} nodes (0..{args.nodes - 1})")
    shard = shards[args.index]
    learner = Learner(
        dataset=dataset,
        shard=shard,
        model=args.model,
        config=config,
        seed=args.seed,
        index=args.index,
        flipped=args.flip_labels,
    )
    print(
        f"train: model {args.model} ({learner.dim:,} parameters), dataset {dataset.name}, "
        f"{len(shard):,} training samples, {len(dataset.test_y):,} test samples",
        flush=True,
    )
    if features is not None:
        print(
            f"train: head {features.head!r} only, frozen features {features.source} sha256 {features.sha256}, "
            f"{len(features.excluded):,} pretraining samples left out",
            flush=True,
        )
    start = time.perf_counter()
    done = 0
    acc, loss = learner.evaluate()
    with tqdm(
        total=args.steps, unit="step", disable=args.no_progress or None, file=sys.stderr, leave=False
    ) as bar:
        while done < args.steps:
            chunk = min(args.eval_every, args.steps - done)
            learner.train(chunk)
            done += chunk
            bar.update(chunk)
            acc, loss = learner.evaluate()
            bar.set_postfix(acc=f"{acc:.4f}", loss=f"{loss:.4f}")
            tqdm.write(f"step {done:>6}: test accuracy {acc:.4f}  loss {loss:.4f}")
    elapsed = time.perf_counter() - start
    print(f"final: test accuracy {acc:.4f}  loss {loss:.4f}  ({done} steps in {elapsed:.1f} s)")
    return 0
