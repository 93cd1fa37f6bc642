"""Cost of one local training step (batch 32) per model, and of a flat-vector get+set relative to it.

    python scripts/bench_learner.py [--dataset mnist] [--repeats 200]

Everything is measured in one run, so the ratios compare like with like on a noisy machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from phalanx.node.datasets import load_dataset
from phalanx.node.learner import Learner, TrainConfig


def _median_seconds(fn, repeats: int) -> float:
    for _ in range(max(3, repeats // 10)):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    dataset = load_dataset(args.dataset)
    print(
        f"dataset {dataset.name}, batch {args.batch_size}, torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(
        f"{'model':<8} {'params':>9} {'step ms':>9} {'samples/s':>11} {'get+set ms':>11} {'get+set / step':>15}"
    )
    for model in ("logreg", "mlp", "cnn"):
        learner = Learner(
            dataset=dataset,
            shard=np.arange(len(dataset.train_y)),
            model=model,
            config=TrainConfig(batch_size=args.batch_size),
        )
        step = _median_seconds(lambda learner=learner: learner.train(1), args.repeats)
        vector = learner.get_vector()
        get_set = _median_seconds(
            lambda learner=learner, v=vector: learner.set_vector(learner.get_vector()), args.repeats
        )
        print(
            f"{model:<8} {learner.dim:>9,} {step * 1e3:>9.3f} {args.batch_size / step:>11,.0f} "
            f"{get_set * 1e3:>11.4f} {get_set / step:>15.4f}"
        )


if __name__ == "__main__":
    main()
