"""What a simulated MoDeST round costs beyond its trainers' training, at 1,000 nodes with s = 10.

    python scripts/bench_modest.py [--nodes 1000] [--s 10] [--a 1] [--rounds 20] [--local-steps 10]

The event loop's wall time is split into training (the s trainers' local steps, timed inside the worker),
evaluation (round 0 only) and everything else: the other nodes' work (answering pings, merging views),
sampling, pings, aggregation, message sizing and the engine. The target: everything else stays under 25%
of the training time. Setup (data, 1,000 protocol objects with 1,000-entry views) and ``start`` are
one-off costs and reported apart.
"""

from __future__ import annotations

import argparse
import sys

import torch

from phalanx.sim.config import SimConfig
from phalanx.sim.sampling_runs import simulate


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
    args = parser.parse_args(argv)
    config = SimConfig(
        nodes=args.nodes,
        rounds=args.rounds,
        seed=args.seed,
        dataset=args.dataset,
        protocol="modest",
        protocol_params={"s": args.s, "a": args.a},
        local_steps=args.local_steps,
    )
    run = simulate(config, eval_every=10**9, eval_models=1)
    rounds = len(run.rows)
    other = run.loop_seconds - run.train_seconds - run.eval_seconds
    modest = run.protocols["0"]
    steps = run.worker.steps_run
    print(
        f"MoDeST, {args.nodes} nodes, s={args.s}, a={args.a}, {rounds} rounds of {args.local_steps} local steps"
    )
    print(f"setup {run.setup_seconds:.2f} s, start {run.start_seconds:.2f} s (one-off)")
    print(f"{'per round':<28}{'ms':>9}")
    print(f"{'training (s trainers)':<28}{1e3 * run.train_seconds / rounds:>9.1f}   ({steps} steps in all)")
    print(f"{'everything else':<28}{1e3 * other / rounds:>9.1f}")
    print(f"{'evaluation (round 0 only)':<28}{1e3 * run.eval_seconds / rounds:>9.1f}")
    print(
        f"messages {run.engine.messages_sent} ({run.engine.messages_sent / rounds:.0f} per round), "
        f"events {run.engine.events_handled}, bytes per round {run.engine.bytes_sent / rounds / 1e6:.2f} MB"
    )
    ratio = other / run.train_seconds
    print(f"overhead / training = {ratio:.1%} (target < 25%)")
    del modest
    return 0 if ratio < 0.25 else 1


if __name__ == "__main__":
    sys.exit(main())
