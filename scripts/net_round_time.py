"""Wall time per round of finished ``phalanx net up`` runs, from the nodes' own logs.

    python scripts/net_round_time.py RUN_DIR [RUN_DIR ...]

Each node logs ``t`` (seconds on its own clock) with every round it reports. Per node, the time per round is
(t of its last report - t of its first) / (rounds between them), so nodes' clocks need not agree and a node
of a sampled protocol (MoDeST) that reports only some rounds counts as well as one that reports all. Prints,
per run, the protocol, the median and range over nodes that reported at least two rounds, and how many did.
"""

from __future__ import annotations

import json
import statistics
import sys
import tomllib
from pathlib import Path


def per_round(log: Path) -> float | None:
    rounds = [
        (e["round"], e["t"])
        for e in (json.loads(line) for line in log.read_text().splitlines() if line.startswith("{"))
        if e.get("event") == "round"
    ]
    if len(rounds) < 2 or rounds[-1][0] == rounds[0][0]:
        return None
    return (rounds[-1][1] - rounds[0][1]) / (rounds[-1][0] - rounds[0][0])


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    print(f"{'run':<32} {'protocol':<10} {'s/round (median)':>16} {'min':>7} {'max':>7}  nodes")
    for run in map(Path, argv):
        protocol = tomllib.loads((run / "config.toml").read_text()).get("protocol", "?")
        times = [t for log in sorted(run.glob("nodes/node-*/log.jsonl")) if (t := per_round(log)) is not None]
        if not times:
            print(f"{run.name:<32} {protocol:<10} {'-':>16}")
            continue
        print(
            f"{run.name:<32} {protocol:<10} {statistics.median(times):>16.3f} {min(times):>7.3f} "
            f"{max(times):>7.3f}  {len(times)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
