"""Run real nodes on separate hosts (Linux network namespaces on a bridge) and print a table per node.

Each node runs in its own namespace with its own 10.x address, listens on 0.0.0.0 and announces that address;
``--limit HOST:RATE`` puts a tbf token bucket on a host's link (both ways). Needs root and iproute2; the
namespaces are always deleted at the end, and only processes this script started are ended (by PID).

    sudo .venv/bin/python scripts/netbed.py --hosts 4 --topology ring --rounds 5 --limit 0:10mbit
    sudo .venv/bin/python scripts/netbed.py --hosts 6 --topology complete --protocol el-local \\
        --protocol-param s=2 --model mlp --dataset mnist --limit 0:10mbit --limit 1:10mbit

The table: host, its address, rounds completed, median seconds per round (after the first), final accuracy,
MB sent and received by the node, and MB through its tbf qdiscs (out, in) where it is limited.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests package: the bed lives there

from tests.netbed.netns import NetBed, unavailable
from tests.netbed.nodes import PORT, complete, node_argv, prepare, ring, run_nodes

TOPOLOGIES = {"ring": ring, "complete": complete}
RELAY_PORT = PORT + 100


def start_relay(bed: NetBed, i: int, delay: float) -> subprocess.Popen[str]:
    """A latency relay in host i's namespace: BED_ADDRESS:RELAY_PORT -> the node's 127.0.0.1:PORT."""
    argv = [sys.executable, "-m", "tests.netbed.delay", "--listen", f"{bed.address(i)}:{RELAY_PORT}"]
    argv += ["--to", f"127.0.0.1:{PORT}", "--delay", str(delay)]
    root = str(Path(__file__).resolve().parents[1])
    proc = subprocess.Popen(bed.command(i, argv), stdout=subprocess.PIPE, text=True, cwd=root)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise SystemExit(f"netbed: error: the latency relay on host {i} did not start")
    return proc


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=4, help="namespaces, one node each (default 4)")
    p.add_argument("--topology", choices=sorted(TOPOLOGIES), default="ring")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--protocol", default="dpsgd")
    p.add_argument("--protocol-param", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--dataset", default="blobs")
    p.add_argument("--model", default="logreg")
    p.add_argument("--round-timeout", type=float, default=20.0)
    p.add_argument("--limit", action="append", default=[], metavar="HOST:RATE", help="tbf on a host's link")
    p.add_argument(
        "--delay",
        type=float,
        default=0.0,
        metavar="MS",
        help="added latency each way on every connection (a user-space relay in front of each node)",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    p.add_argument("--workdir", type=Path, help="keys and logs (default: a temporary directory)")
    p.add_argument("node_args", nargs="*", help="more 'phalanx node run' flags, after --")
    return p.parse_args(argv)


def limits_of(specs: list[str], hosts: int) -> dict[int, str]:
    out = {}
    for spec in specs:
        host, sep, rate = spec.partition(":")
        if not sep or not host.isdigit() or not rate or int(host) >= hosts:
            raise SystemExit(
                f"netbed: error: --limit expects HOST:RATE with HOST in 0..{hosts - 1}, got {spec!r}"
            )
        out[int(host)] = rate
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    why = unavailable()
    if why is not None:
        print(f"netbed: error: {why}", file=sys.stderr)
        return 2
    limits = limits_of(args.limit, args.hosts)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="netbed-"))
    edges = TOPOLOGIES[args.topology](args.hosts)
    extra = [
        *("--protocol", args.protocol, "--dataset", args.dataset, "--model", args.model),
        *("--rounds", str(args.rounds), "--round-timeout", str(args.round_timeout), "--linger", "3"),
    ]
    for pair in args.protocol_param:
        extra += ["--protocol-param", pair]
    extra += args.node_args
    with NetBed(args.hosts) as bed:
        for host, rate in limits.items():
            bed.limit(host, rate)
        relays = [start_relay(bed, i, args.delay / 1000) for i in range(args.hosts)] if args.delay else []
        nodes = prepare(bed, workdir, port=RELAY_PORT if args.delay else PORT)
        argvs = [node_argv(nodes, i, edges, workdir, extra) for i in range(args.hosts)]
        print(
            f"netbed: {args.hosts} hosts ({bed.token}-h*, 10.{bed.subnet[0]}.{bed.subnet[1]}.0/24), "
            f"{args.topology}, {args.protocol}, {args.rounds} rounds, limits {limits or 'none'}; logs in {workdir}",
            flush=True,
        )
        try:
            trio.run(lambda: run_nodes(bed, nodes, argvs, workdir, timeout=args.timeout))
        finally:
            for relay in relays:  # ours, by PID
                relay.kill()
                relay.wait()
        shaped = {host: bed.shaped_bytes(host) for host in limits}
    header = (
        f"{'host':>4}  {'address':<15}  {'rounds':>6}  {'s/round':>7}  {'accuracy':>8}  {'MB out':>7}  "
        f"{'MB in':>7}  {'tbf out/in MB':>13}  exit"
    )
    print(header)
    print("-" * len(header))
    failed = 0
    for node in nodes:
        last = node.rounds[-1] if node.rounds else {}
        stopped = node.of("stopped")
        counters = stopped[-1] if stopped else last
        per_round = node.round_seconds
        acc = last.get("accuracy")
        tbf = shaped.get(node.index)
        failed += node.exit_code != 0 or last.get("round", 0) < args.rounds
        print(
            f"{node.index:>4}  {bed.address(node.index):<15}  {last.get('round', 0):>6}  "
            f"{'-' if per_round is None else f'{per_round:.2f}':>7}  {'-' if acc is None else f'{acc:.4f}':>8}  "
            f"{counters.get('bytes_out', 0) / 1e6:>7.2f}  {counters.get('bytes_in', 0) / 1e6:>7.2f}  "
            f"{'-' if tbf is None else f'{tbf[0] / 1e6:.2f}/{tbf[1] / 1e6:.2f}':>13}  {node.exit_code}"
        )
        reached = {e["peer"] for e in node.of("reachable")}
        for bad in node.of("unreachable"):  # at start a neighbour may not be up yet: only those never reached
            if bad["peer"] in reached:
                continue
            print(
                f"      unreachable: {bad['peer'][-8:]} at {bad['address'].split('/p2p/')[0]}: {bad['reason']}"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
