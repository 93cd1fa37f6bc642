"""Sybil capture in the simulator: the share of MoDeST's samples an attacker with K fresh keys takes from
100 honest nodes, under each admission policy (``phalanx.sim.sybil``; the attack is described there).

    .venv/bin/python scripts/sybil_capture.py [--honest 100] [--rounds 40] [--keys 1 10 100]

Columns per K: keys admitted to the honest node's view by the end / share of the samples (s = 10
trainers + a = 2 aggregators) the attacker held, averaged over the run's last half. A fair share for K
keys among H honest nodes would be K / (H + K).
"""

from __future__ import annotations

import argparse
import sys
import time

from phalanx.gossip.modest.admission import AdmissionPolicy
from phalanx.sim.sybil import sybil_capture


def policies(honest: int) -> list[tuple[str, AdmissionPolicy | None]]:
    members = frozenset(f"h{i:03d}" for i in range(honest))
    return [
        ("open", None),
        ("allow-list (--members)", AdmissionPolicy(allow=members)),
        ("pow_bits=4", AdmissionPolicy(pow_bits=4)),
        ("pow_bits=8", AdmissionPolicy(pow_bits=8)),
        ("admit_per_round=1", AdmissionPolicy(per_round=1)),
        ("admit_per_introducer=1", AdmissionPolicy(per_introducer=1)),
        ("per_round=1 + per_introducer=1", AdmissionPolicy(per_round=1, per_introducer=1)),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--honest", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--keys", type=int, nargs="+", default=[1, 10, 100])
    args = parser.parse_args()
    if args.honest < 1 or args.rounds < 2 or min(args.keys) < 1:
        print("sybil_capture: --honest >= 1, --rounds >= 2 and every --keys >= 1", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    print(f"{args.honest} honest nodes, {args.rounds} rounds, s=10 a=2, join_delay=2")
    print(f"{'policy':>32}" + "".join(f"  {f'K={k} adm/share':>16}" for k in args.keys))
    for name, policy in policies(args.honest):
        cells = []
        for k in args.keys:
            c = sybil_capture(policy, keys=k, honest=args.honest, rounds=args.rounds)
            cells.append(f"{c.admitted:>5}/{c.mean:<10.3f}")
        print(f"{name:>32}" + "".join(f"  {cell:>16}" for cell in cells))
    print(f"({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
