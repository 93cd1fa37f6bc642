"""What a simulated MoDeST round costs beyond its trainers' training, at 1,000 nodes with s = 10.

    python scripts/bench_modest.py [--nodes 1000] [--s 10] [--a 1] [--rounds 20] [--local-steps 10]

The run goes through the one simulation pipeline (``phalanx.sim.experiment.plan`` + ``run``, what
``phalanx sim --protocol modest`` runs). Its wall time is split into set-up (data, 1,000 protocol objects
with 1,000-entry views; a one-off cost, reported apart), training (the s trainers' local steps, timed inside
the worker), evaluation (round 0 and the last round only) and everything else: the other nodes' work
(answering pings, merging views), sampling, pings, aggregation, message sizing, metrics and the engine. The
target: everything else stays under 25% of the training time.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from contextlib import ExitStack
from typing import Any
from unittest import mock

import torch

from phalanx.node.learner import Trainer
from phalanx.sim import experiment
from phalanx.sim.config import SimConfig
from phalanx.sim.engine import Engine
from phalanx.sim.experiment import plan, run
from phalanx.sim.training import SimWorker


def _timed(fn: Any, spent: dict[str, float], key: str) -> Any:
    """``fn`` timed into ``spent[key]``, and into ``spent[key + "_in_loop"]`` when it runs inside the engine's
    loop (``spent["in_loop"]`` set): only that part is subtracted from the loop's time (the pipeline also
    evaluates after the loop has returned)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        inside = spent["in_loop"] > 0
        spent["in_loop"] += key == "loop"
        try:
            return fn(*args, **kwargs)
        finally:
            spent["in_loop"] -= key == "loop"
            took = time.perf_counter() - start
            spent[key] += took
            if inside:
                spent[key + "_in_loop"] += took

    return wrapper


def main(argv: list[str] | None = None) -> int:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--s", type=int, default=10)
    parser.add_argument("--a", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--unsigned", action="store_true", help="views without signatures (to price signed membership)"
    )
    args = parser.parse_args(argv)
    config = SimConfig(
        nodes=args.nodes,
        rounds=args.rounds,
        seed=args.seed,
        dataset=args.dataset,
        protocol="modest",
        protocol_params={"s": args.s, "a": args.a},
        local_steps=args.local_steps,
        eval_every=10**9,  # evaluation on round 0 and the last round only
        eval_nodes=1,
    )
    spent: collections.defaultdict[str, float] = collections.defaultdict(float)
    start = time.perf_counter()
    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(SimWorker, "train", _timed(SimWorker.train, spent, "train")))
        stack.enter_context(mock.patch.object(Trainer, "evaluate", _timed(Trainer.evaluate, spent, "eval")))
        stack.enter_context(mock.patch.object(Engine, "resume", _timed(Engine.resume, spent, "loop")))
        if args.unsigned:
            unsigned = (collections.defaultdict(lambda: None), None)
            stack.enter_context(mock.patch.object(experiment, "sim_keyring", lambda peers, seed: unsigned))
        result = run(plan(config))
    wall = time.perf_counter() - start
    rounds = len(result.rows)
    other = spent["loop"] - spent["train_in_loop"] - spent["eval_in_loop"]
    counters = result.rows[-1]["counters"]
    print(
        f"MoDeST, {args.nodes} nodes, s={args.s}, a={args.a}, {rounds} rounds of {args.local_steps} local steps "
        f"(the one simulation pipeline, {'unsigned' if args.unsigned else 'signed'} membership)"
    )
    print(f"set-up and start {wall - spent['loop']:.2f} s (one-off)")
    print(f"{'per round':<28}{'ms':>9}")
    print(
        f"{'training (s trainers)':<28}{1e3 * spent['train'] / rounds:>9.1f}   ({result.engine_stats['train_steps']} steps in all)"
    )
    print(f"{'everything else':<28}{1e3 * other / rounds:>9.1f}")
    print(f"{'evaluation (2 rounds)':<28}{1e3 * spent['eval'] / rounds:>9.1f}")
    print(
        f"messages {result.engine_stats['messages']} ({result.engine_stats['messages'] / rounds:.0f} per round), "
        f"events {result.engine_stats['events']}, bytes per round {result.engine_stats['bytes'] / rounds / 1e6:.2f} MB, "
        f"pings {counters.get('pings', 0):.0f}"
    )
    ratio = other / spent["train"]
    print(f"overhead / training = {ratio:.1%} (target < 25%)")
    return 0 if ratio < 0.25 else 1


if __name__ == "__main__":
    sys.exit(main())
