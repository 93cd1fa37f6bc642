"""The same configuration on real processes (``phalanx net up``) and in the simulator (``phalanx sim``).

For each protocol it runs both with the same settings and seed and prints, per round, the mean test accuracy
of both worlds and their difference, then the bytes each world sent until its mean accuracy first reached
``--target`` (MoDeST's claim to check: within 10 %), and the largest accuracy difference (within 1 point).

    .venv/bin/python scripts/real_vs_sim.py --nodes 16 --rounds 10
    .venv/bin/python scripts/real_vs_sim.py --nodes 16 --rounds 10 --protocols modest --target 0.8

Both worlds read the same flags: ``--topology`` and uniform mixing for D-PSGD (the node's weights are
uniform), ``s`` for MoDeST. Results land in ``--out`` (one folder per world and protocol).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

MODEST_S = 4  # MoDeST's sample size in both worlds
PROTOCOLS = {
    "dpsgd": ["--protocol", "dpsgd"],
    "modest": ["--protocol", "modest", "--protocol-param", f"s={MODEST_S}"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=16)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--topology", default="regular:4", help="D-PSGD's graph (default regular:4)")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--model", default="mlp")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", type=float, default=0.8, help="accuracy for the bytes-to-target column")
    p.add_argument("--protocols", default="dpsgd,modest")
    p.add_argument("--out", type=Path)
    return p.parse_args(argv)


def rows(folder: Path) -> list[dict[str, Any]]:
    path = folder / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def bytes_to(target: float, metrics: list[dict[str, Any]]) -> tuple[int | None, int | None]:
    """(round, bytes sent so far: the rows' ``bytes`` are cumulative) when the mean accuracy first reached
    ``target``."""
    for row in metrics:
        acc = row.get("acc_mean")
        if acc is not None and acc >= target:
            return row["round"], row.get("bytes") or 0
    return None, None


def sample_overlap(real: Path, nodes: int, s: int, rounds: int) -> tuple[int, int, int]:
    """MoDeST: (trainer slots where the simulator's sample and the real run's agree, slots where the real
    run's trainers are the hash sample of its own peer ids, all slots). The simulator names peers "0".."N-1",
    a real node's id is its libp2p key's, and the sample of a round ranks peers by SHA-256(peer id, round)."""
    from phalanx.gossip.membership import View
    from phalanx.gossip.sampling import TRAINERS, sample

    ids: dict[str, int] = {}
    trained: dict[int, set[int]] = {}
    for i in range(nodes):
        log = real / "nodes" / f"node-{i}" / "log.jsonl"
        for line in log.read_text().splitlines() if log.exists() else []:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "listening":
                ids[event["peer_id"]] = i
            elif event.get("event") == "round":
                trained.setdefault(event["round"], set()).add(i)
    sim_view, real_view = View("-", [str(i) for i in range(nodes)]), View("-", list(ids))
    agree = own = 0
    for k in range(1, rounds + 1):
        in_sim = {int(p) for p in sample(sim_view, k, s, inactivity=1000, role=TRAINERS)}
        in_real = {ids[p] for p in sample(real_view, k, s, inactivity=1000, role=TRAINERS)}
        agree += len(in_sim & in_real)
        own += len(in_real & trained.get(k, set()))
    return agree, own, s * rounds


def run(argv: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "phalanx", *argv], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"real_vs_sim: {' '.join(argv[:2])} failed:\n{done.stderr[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="real-vs-sim-"))
    common = [
        *("--nodes", str(args.nodes), "--rounds", str(args.rounds), "--seed", str(args.seed)),
        *("--dataset", args.dataset, "--model", args.model, "--eval-every", "1", "--no-plots"),
    ]
    for name in args.protocols.split(","):
        extra = PROTOCOLS[name]
        topology = ["--topology", args.topology] if name == "dpsgd" else ["--topology", "complete"]
        real, sim = out / f"real-{name}", out / f"sim-{name}"
        run(["net", "up", *common, *extra, *topology, "--out", str(real)])
        sim_extra = ["--mixing", "uniform"] if name == "dpsgd" else []
        run(["sim", *common, *extra, *topology, *sim_extra, "--out", str(sim)])
        r_rows = {row["round"]: row for row in rows(real)}
        s_rows = {row["round"]: row for row in rows(sim)}
        print(
            f"\n{name}: {args.nodes} nodes, {args.rounds} rounds, {args.dataset}/{args.model}, seed {args.seed}"
        )
        print(
            f"{'round':>5}  {'real acc':>8}  {'sim acc':>8}  {'diff':>6}  {'real kB (cumulative)':>20}  {'sim kB':>8}"
        )
        gap = 0.0
        for k in sorted(set(r_rows) & set(s_rows)):
            ra, sa = r_rows[k].get("acc_mean"), s_rows[k].get("acc_mean")
            diff = None if ra is None or sa is None else ra - sa
            if diff is not None:
                gap = max(gap, abs(diff))
            print(
                f"{k:>5}  {'-' if ra is None else f'{ra:.4f}':>8}  {'-' if sa is None else f'{sa:.4f}':>8}  "
                f"{'-' if diff is None else f'{diff * 100:+.2f}':>6}  "
                f"{(r_rows[k].get('bytes') or 0) / 1e3:>20.1f}  {(s_rows[k].get('bytes') or 0) / 1e3:>8.1f}"
            )
        rr, rb = bytes_to(args.target, rows(real))
        sr, sb = bytes_to(args.target, rows(sim))
        ratio = f"{rb / sb:.3f}" if rb and sb else "-"
        print(
            f"largest accuracy gap {gap * 100:.2f} points; bytes to {args.target:.2f}: real {rb} (round {rr}), "
            f"sim {sb} (round {sr}), real/sim {ratio}"
        )
        last_r, last_s = r_rows.get(args.rounds - 1), s_rows.get(args.rounds - 1)
        if last_r and last_s and last_s.get("bytes"):
            print(f"bytes after the last round: real/sim {(last_r.get('bytes') or 0) / last_s['bytes']:.3f}")
        if name == "modest":
            agree, own, slots = sample_overlap(real, args.nodes, MODEST_S, args.rounds)
            print(
                f"trainer slots: sim and real samples agree in {agree} of {slots}; the real run trained its own "
                f"hash sample in {own} of {slots} (different peer ids, different samples)"
            )
    print(f"\nresults in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
