"""ClippedGossip's "malicious ring" on MNIST (He, Karimireddy & Jaggi, 2022, arXiv:2202.01545).

    .venv/bin/python scripts/malicious_ring.py

Five honest nodes sit on a ring; each also has two Byzantine neighbours of its own (15 nodes, topology
``malicious-ring:5:2``, Metropolis weights: every honest node gives 2/5 of its weight to attackers). The
attackers run IPM, ALIE or dissensus, omniscient as in the paper (they see the honest vectors around
their target). The table prints the honest nodes' final mean test accuracy for each rule and attack,
next to the attack-free run (the attackers stay silent, so the honest ring gossips on its own).
"""

from __future__ import annotations

import argparse
import time

import torch

from phalanx.sim.config import SimConfig
from phalanx.sim.experiment import plan, run
from phalanx.sim.report import table

# (label, rule, params, include_own): robust statistics over [own, 2 honest, 2 Byzantine] (attackers are a
# minority) and over the 4 neighbours only (attackers are half of them).
RULES = (
    ("self-centred clipping", "clipped-gossip", {"tau": 1.0}, True),
    ("trimmed mean", "trimmed-mean", {"f": 2}, True),
    ("geometric median", "geometric-median", {}, True),
    ("trimmed mean, nbrs only", "trimmed-mean", {"f": 1}, False),
    ("geo. median, nbrs only", "geometric-median", {}, False),
    ("gossip mean", "mean", {}, True),
)
ATTACKS = (
    ("no attack", "silent", {}),
    ("IPM", "ipm", {"epsilon": 0.1}),
    ("ALIE", "alie", {}),
    ("dissensus", "dissensus", {"epsilon": 1.5}),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tau", type=float, default=1.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for label, rule, params, include_own in RULES:
        if rule == "clipped-gossip":
            params = {"tau": args.tau}
        row: dict[str, object] = {"rule": label}
        for name, attack, attack_params in ATTACKS:
            config = SimConfig(
                name=f"{rule}-{attack}",
                nodes=15,
                rounds=args.rounds,
                seed=args.seed,
                topology="malicious-ring:5:2",
                byzantine_nodes=tuple(range(5, 15)),
                attack=attack,
                attack_params=attack_params,
                rule=rule,
                rule_params=params,
                include_own=include_own,
                dataset=args.dataset,
                local_steps=args.local_steps,
                eval_every=args.rounds,
            )
            start = time.perf_counter()
            result = run(plan(config))
            row[name] = result.rows[-1]["acc_mean"]
            print(
                f"{label:22s} {name:10s} acc {row[name]:.4f}  ({time.perf_counter() - start:.1f} s)",
                flush=True,
            )
        rows.append(row)
    print()
    print(table(rows, [("rule", "rule", "")] + [(name, name, ".3f") for name, _, _ in ATTACKS]))


if __name__ == "__main__":
    main()
