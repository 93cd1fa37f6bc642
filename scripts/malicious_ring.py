"""ClippedGossip's "malicious ring" on MNIST (He, Karimireddy & Jaggi, 2022, arXiv:2202.01545).

    .venv/bin/python scripts/malicious_ring.py                  # honest-majority ring, about 2.5 min
    .venv/bin/python scripts/malicious_ring.py --variant both   # also node 0 with a third attacker, about 5 min
    .venv/bin/python scripts/malicious_ring.py --model cnn-dropout --rules trimmed-mean --attacks alie
                                                                # the paper's CNN, one cell (minutes)

The setting of the paper's own run (epfml/byzantine-robust-decentralized-optimizer, ``honest_majority.py``
with the ``args.json`` of each run under ``outputs/honest_majority/exp``), as far as this simulator goes:

- topology ``mr5,1,1``: five honest nodes on a ring, node i with two Byzantine neighbours of its own (each
  attacker talks to that one node only), 15 nodes; ``--variant both`` adds ``mr5,1,0``, where node 0 has a
  third Byzantine neighbour (16 nodes: the honest majority then fails at node 0);
- mixing: Metropolis weights made lazy (the run's ``normalize = 1``): ``W' = (W + (1 - m) I) / (2 - m)``
  with m the smallest honest self-weight, i.e. self 5/9 and 1/9 per neighbour on the honest-majority ring;
- trimmed mean (b = 2) and geometric median (RFA) over the node's own vector and all its neighbours',
  unweighted; self-centred clipping with tau = 0.1 and the mixing weights;
- attacks as in the code: IPM epsilon = 0.1, ALIE ``ALIE10``, which sends ``mu - 10 sigma`` (here z = -10,
  ``--alie-z``; our ``alie`` is ``mu + z sigma``), dissensus epsilon = 1.5; the
  attacker sees its target's vector and the target's honest neighbours' vectors (omniscient);
- SGD, lr 0.01, momentum 0.9, batch 32, i.i.d. shards, one local step per gossip round.

Differences that remain: the model (our MLP 784-64-10 by default; ``--model cnn-dropout`` is the paper's
1.2M-parameter CNN, about 4 min a cell), the data (the
embedded 8,000/2,000 MNIST subset), the number of rounds (default 300 of the paper's 900, for time), the
metric (mean accuracy of the honest nodes, not the accuracy of their averaged model). Two geometric
medians: ours (started among the inputs, run to convergence) and the paper's RFA (8 steps from the origin,
``start = "origin"``), which IPM drags towards zero.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from phalanx.sim.config import SimConfig
from phalanx.sim.experiment import Plan, plan, run
from phalanx.sim.mixing import mixing_matrix
from phalanx.sim.report import table

HONEST = 5
TAU = 0.1
# (label, rule, params); trimmed mean with b = 2 over own + 4 neighbours is the coordinate-wise median.
RULES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("self-centred clipping", "clipped-gossip", {"tau": TAU}),
    ("trimmed mean (b=2)", "trimmed-mean", {"f": 2}),
    ("geometric median", "geometric-median", {}),
    # The paper's RFA: 8 smoothed Weiszfeld steps started at the origin, nu = 0.1 (its ``rfa8`` runs).
    (
        "RFA as the paper runs it",
        "geometric-median",
        {"start": "origin", "iterations": 8, "nu": 0.1, "tolerance": 0.0},
    ),
    ("gossip mean", "mean", {}),
)
ATTACKS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("no attack", "silent", {}),
    ("IPM", "ipm", {"epsilon": 0.1}),
    ("ALIE", "alie", {}),  # z from --alie-z
    ("dissensus", "dissensus", {"epsilon": 1.5}),
)


def ring_edges(extra_attacker: bool) -> list[tuple[int, int]]:
    """The paper's MaliciousRing(5): honest ring 0..4, node i joined to attackers 5 + 2i and 6 + 2i (the
    numbering of ``malicious-ring:5:2``), and with ``extra_attacker`` a 16th node joined to node 0 only."""
    edges = [(i, (i + 1) % HONEST) for i in range(HONEST)]
    edges += [(i, HONEST + 2 * i + k) for i in range(HONEST) for k in range(2)]
    if extra_attacker:
        edges.append((0, 3 * HONEST))
    return edges


def lazy_metropolis(p: Plan) -> dict[int, dict[int, float]]:
    """The run's mixing matrix: Metropolis, then ``(W + (1 - m) I) / (2 - m)`` with m the smallest
    self-weight of an honest node (``MaliciousRing(normalize=True)`` in the paper's code)."""
    w = mixing_matrix(p.graph, "metropolis")
    m = float(min(w[i, i] for i in p.honest))
    w = (w + (1.0 - m) * np.eye(len(w))) / (2.0 - m)
    return {i: {int(j): float(w[i, j]) for j in p.graph[i]} for i in p.graph}


def honest_shards(p: Plan) -> list[np.ndarray]:
    """The plan's training indices dealt out over the honest nodes only (the attackers do not train), so
    that each honest node holds n / 5 of the data instead of n / 15: nearer the paper's shards of the full
    60,000 images."""
    everything = np.sort(np.concatenate(p.shards))
    order = np.random.default_rng(p.config.seed).permutation(everything)
    pieces = np.array_split(order, HONEST)
    return [pieces[i] if i < HONEST else np.empty(0, dtype=np.int64) for i in range(p.config.nodes)]


def config_for(
    variant: str,
    graph_dir: Path,
    rule: str,
    params: dict[str, Any],
    attack: str,
    attack_params: dict[str, Any],
    args: argparse.Namespace,
) -> SimConfig:
    extra = variant == "mr5,1,0"
    nodes = 3 * HONEST + int(extra)
    if extra:
        path = graph_dir / "mr5_1_0.edges"
        path.write_text("".join(f"{u} {v}\n" for u, v in ring_edges(True)))
        topology = f"file:{path}"
    else:
        topology = f"malicious-ring:{HONEST}:2"
    if attack == "silent" and rule == "trimmed-mean":
        # Silent attackers leave own + 2 inputs; the paper's TM lowers b until n - 2b > 0, i.e. b = 1.
        params = {"f": 1}
    return SimConfig(
        name=f"{variant}-{rule}-{attack}",
        nodes=nodes,
        rounds=args.rounds,
        seed=args.seed,
        topology=topology,
        byzantine_nodes=tuple(range(HONEST, nodes)),
        attack=attack,
        attack_params=attack_params,
        rule=rule,
        rule_params=params,
        include_own=True,
        dataset=args.dataset,
        model=args.model,
        lr=0.01,
        momentum=0.9,
        batch_size=32,
        local_steps=1,
        eval_every=args.rounds,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300, help="gossip rounds = SGD steps (paper: 900)")
    parser.add_argument(
        "--variant",
        choices=("hm", "both"),
        default="hm",
        help="hm: mr5,1,1 only; both: also mr5,1,0 (node 0 with a third attacker)",
    )
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rules",
        nargs="+",
        metavar="RULE",
        help="only these rows (rule names, e.g. trimmed-mean clipped-gossip)",
    )
    parser.add_argument(
        "--attacks", nargs="+", metavar="ATTACK", help="only these columns (silent, ipm, alie, dissensus)"
    )
    parser.add_argument(
        "--honest-data",
        action="store_true",
        help="split the training set over the 5 honest nodes only (default: over all nodes, as a plan does)",
    )
    parser.add_argument(
        "--alie-z",
        type=float,
        default=-10.0,
        help="ALIE's z: mu + z sigma; the paper's code sends mu - 10 sigma (ALIE10), i.e. z = -10",
    )
    args = parser.parse_args()
    rules = [r for r in RULES if args.rules is None or r[1] in args.rules]
    attacks = [
        (name, attack, {"z": args.alie_z} if attack == "alie" else params)
        for name, attack, params in ATTACKS
        if args.attacks is None or attack in args.attacks
    ]
    if not rules or not attacks:
        parser.error(
            f"no cell left: rules are {sorted({r[1] for r in RULES})}, attacks {[a[1] for a in ATTACKS]}"
        )
    torch.set_num_threads(1)
    variants = ["mr5,1,1"] + (["mr5,1,0"] if args.variant == "both" else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:
            for label, rule, params in rules:
                row: dict[str, object] = {"ring": variant, "rule": label}
                for name, attack, attack_params in attacks:
                    if variant != "mr5,1,1" and attack == "silent":
                        row[name] = None  # the same honest ring as mr5,1,1 without attackers
                        continue
                    start = time.perf_counter()
                    p = plan(config_for(variant, Path(tmp), rule, dict(params), attack, attack_params, args))
                    p.weights = lazy_metropolis(p)
                    if args.honest_data:
                        p.shards = honest_shards(p)
                    result = run(p)
                    row[name] = result.rows[-1]["acc_mean"]
                    print(
                        f"{variant} {label:22s} {name:10s} acc {row[name]:.4f}  "
                        f"({time.perf_counter() - start:.1f} s)",
                        flush=True,
                    )
                rows.append(row)
    print()
    columns = [("ring", "ring", ""), ("rule", "rule", "")] + [(n, n, ".3f") for n, _, _ in attacks]
    print(table(rows, columns))


if __name__ == "__main__":
    main()
