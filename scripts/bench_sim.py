"""Simulator overhead: wall time of a simulated run vs the pure local training of the same nodes and steps.

    .venv/bin/python scripts/bench_sim.py --nodes 64 1000 --rounds 20

For each size it runs D-PSGD (MLP on the embedded MNIST, one local step per round, random 8-regular
graph, trimmed mean with f=1 by default) through the full simulator, then replays exactly the same
training steps (same nodes, same batches, one shared Trainer, every node training its own model: local
SGD without gossip) with nothing else, and prints
``overhead = simulated wall time / pure training time`` (the median over ``--repeat`` alternated pairs,
with the smallest and largest pair) and the process's peak memory during the first simulation. Evaluation is
limited to the first and last round on 8 nodes and 500 test images so that it does not dominate.

``--breakdown`` also attributes the overhead, per node and round: the same simulation again with each local
step replaced by a copy of the vector (what is left: aggregation, engine, protocol, metrics, evaluation), and
once more with the aggregation also replaced by keeping the node's own vector (engine, protocol, metrics,
evaluation). Differences of medians, so the parts are estimates, not exact shares.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from contextlib import ExitStack
from unittest import mock

import torch

from phalanx.node.learner import TrainConfig, Trainer
from phalanx.sim.config import SimConfig
from phalanx.sim.experiment import plan, run
from phalanx.sim.report import table
from phalanx.sim.training import SimWorker


def pure_training(config: SimConfig, p, rounds: int) -> float:
    trainer = Trainer(config.model, p.dataset, TrainConfig.from_settings(config), init_seed=config.seed)
    worker = SimWorker(trainer, p.dataset, p.shards, seed=config.seed, step_time=config.step_time)
    # Every node keeps its own model from step to step (local SGD without gossip), as in the simulation:
    # one shared vector for all nodes would stay in cache, which the simulated nodes' models cannot.
    params = {str(i): trainer.initial.clone() for i in range(config.nodes)}
    start = time.perf_counter()
    for r in range(rounds):
        for i in range(config.nodes):
            node = str(i)
            params[node], _ = worker.train(node, r, params[node], config.local_steps)
    return time.perf_counter() - start


def _copy_instead_of_training(self, node, round, params, steps):
    return params.clone(), float("nan")


def _keep_own(self, own, received, weights):
    return own


def timed_without_training(p, repeat: int, *, aggregation: bool) -> float:
    """Median wall time of the simulation with local training left out, and aggregation too unless asked."""
    from phalanx.gossip.aggregator import Combiner

    times = []
    for _ in range(repeat):
        with ExitStack() as stack:
            stack.enter_context(mock.patch.object(SimWorker, "train", _copy_instead_of_training))
            if not aggregation:
                stack.enter_context(mock.patch.object(Combiner, "__call__", _keep_own))
            start = time.perf_counter()
            run(p)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[64, 1000])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--rule", default="trimmed-mean")
    parser.add_argument("--f", type=int, default=1)
    parser.add_argument("--degree", type=int, default=8)
    parser.add_argument("--local-steps", type=int, default=1, help="local SGD steps per round (issue: 1)")
    parser.add_argument("--repeat", type=int, default=3, help="simulation / pure-training pairs per size")
    parser.add_argument(
        "--breakdown", action="store_true", help="also time the run without training, and without aggregation"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    parts = []
    for n in args.nodes:
        config = SimConfig(
            name=f"bench-{n}",
            nodes=n,
            rounds=args.rounds,
            topology=f"regular:{args.degree}",
            dataset="mnist",
            model="mlp",
            local_steps=args.local_steps,
            rule=args.rule,
            rule_params={"f": args.f} if args.rule != "mean" else {},
            eval_every=args.rounds,
            eval_nodes=8,
            eval_samples=500,
        )
        p = plan(config)
        sims, pures = [], []
        peak = 0.0
        for k in range(args.repeat):  # alternated, so load from other processes hits both sides alike
            start = time.perf_counter()
            result = run(p)
            sims.append(time.perf_counter() - start)
            if k == 0:  # the simulation's own peak, before the pure-training replays allocate theirs
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            pures.append(pure_training(config, p, args.rounds))
        ratios = sorted(a / b for a, b in zip(sims, pures))
        rows.append(
            {
                "nodes": n,
                "rule": args.rule,
                "steps": n * args.rounds * args.local_steps,
                "messages": result.rows[-1]["messages"],
                "sim_s": statistics.median(sims),
                "train_s": statistics.median(pures),
                "overhead": statistics.median(ratios),
                "spread": f"{ratios[0]:.2f}-{ratios[-1]:.2f}",
                "peak_mb": peak,
            }
        )
        print(
            f"nodes={n}: simulated {sims} s, pure training {pures} s, peak {peak:.0f} MB",
            flush=True,
        )
        if args.breakdown:
            per = 1e6 / (n * args.rounds)  # seconds of a whole run -> microseconds per node and round
            no_train = timed_without_training(p, args.repeat, aggregation=True)
            bare = timed_without_training(p, args.repeat, aggregation=False)
            sim, pure = statistics.median(sims), statistics.median(pures)
            parts.append(
                {
                    "nodes": n,
                    "pure": pure * per,
                    "in_sim": (sim - no_train) * per,
                    "aggregation": (no_train - bare) * per,
                    "rest": bare * per,
                    "overhead": (sim - pure) * per,
                }
            )
    print(
        table(
            rows,
            (
                ("nodes", "nodes", ""),
                ("rule", "rule", ""),
                ("steps", "local steps", ""),
                ("messages", "messages", ""),
                ("sim_s", "simulated s", ".2f"),
                ("train_s", "training only s", ".2f"),
                ("overhead", "overhead", ".2f"),
                ("spread", "min-max", ""),
                ("peak_mb", "peak MB", ".0f"),
            ),
        )
    )
    if parts:
        print(
            "\nper node and round, us (rest: engine, protocol, metrics, evaluation and one copy of the vector)"
        )
        print(
            table(
                parts,
                (
                    ("nodes", "nodes", ""),
                    ("pure", "local step alone", ".0f"),
                    ("in_sim", "local step in the simulation", ".0f"),
                    ("aggregation", "aggregation", ".0f"),
                    ("rest", "rest", ".0f"),
                    ("overhead", "simulated - alone", ".0f"),
                ),
            )
        )


if __name__ == "__main__":
    main()
