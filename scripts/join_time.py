"""How long a node that knows one address takes to become part of a running network, across hosts.

Every node runs in its own network namespace (tests/netbed/), every host's link under a tbf limit
(``--rate``), and with ``--delay MS`` a user-space relay in front of every node adds that latency to each
connection both ways. ``--hosts - 1`` nodes form the network first:

- ``--protocol dpsgd``: host 0 starts alone (``--degree K --alone wait``), every other one knows only host 0's
  address (``--bootstrap``); the network is *formed from one address*;
- ``--protocol modest``: the first nodes start from fixed lists (MoDeST's initial membership).

When every one of them has completed ``--warm`` rounds, the last host joins with ``--bootstrap`` host 0 only.
Printed: how long the network took to form (D-PSGD: until every node had mixed a neighbour's model), and for
the joiner the seconds (from its first log line, i.e. after Python and torch are imported) until it knew
members, and until it mixed a neighbour's model (D-PSGD) or reported a round (MoDeST: it was sampled), with
the rounds that took (its own round lines for D-PSGD; rounds of the network since it joined for MoDeST).

    sudo .venv/bin/python scripts/join_time.py --hosts 6 --protocol dpsgd --rate 10mbit --delay 50
    sudo .venv/bin/python scripts/join_time.py --hosts 6 --protocol modest --rate 10mbit --delay 50
    sudo .venv/bin/python scripts/join_time.py --hosts 16 --protocol dpsgd --rate 10mbit --delay 50

Needs root; the namespaces are always deleted, and only the processes this script started are ended (by PID).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests package: the bed lives there

from phalanx.node.netup import _lines
from tests.netbed.netns import NetBed, unavailable
from tests.netbed.nodes import PORT, prepare

RELAY_PORT = PORT + 100


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=6)
    p.add_argument("--protocol", choices=("dpsgd", "modest"), default="dpsgd")
    p.add_argument("--degree", type=int, default=3, help="D-PSGD neighbours per node")
    p.add_argument("--s", type=int, default=3, help="MoDeST sample size")
    p.add_argument("--param", action="append", default=[], help="more MoDeST --protocol-param KEY=VALUE")
    p.add_argument("--rate", default="10mbit", help="tbf rate on every host's link ('' = none)")
    p.add_argument("--delay", type=float, default=50.0, metavar="MS", help="added latency each way")
    p.add_argument("--warm", type=int, default=3, help="rounds every first node completes before the join")
    p.add_argument("--model", default="mlp")
    p.add_argument("--timeout", type=float, default=400.0)
    p.add_argument("--workdir", type=Path)
    return p.parse_args(argv)


class Node:
    def __init__(self, index: int) -> None:
        self.index = index
        self.events: list[tuple[float, dict[str, Any]]] = []  # (arrival time on the script's clock, event)
        self.proc: trio.Process | None = None
        self.changed = trio.Event()

    def first(self, kind: str, **match: Any) -> tuple[float, dict[str, Any]] | None:
        for t, e in self.events:
            if e.get("event") == kind and all(e.get(k, 0) >= v for k, v in match.items()):
                return t, e
        return None

    def mixed(self) -> tuple[float, dict[str, Any]] | None:
        for t, e in self.events:
            if e.get("event") == "round" and e.get("received", 0) >= 1:
                return t, e
        return None

    def rounds(self) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e.get("event") == "round"]


async def main_async(args: argparse.Namespace, bed: NetBed, workdir: Path) -> int:
    nodes = prepare(bed, workdir, port=RELAY_PORT if args.delay else PORT)
    port = PORT
    common = [
        *("--dataset", "blobs", "--model", args.model, "--eval-every", "0", "--rounds", "0"),
        *("--metrics-port", "-1", "--round-timeout", "10", "--members-interval", "1"),
    ]
    if args.protocol == "modest":
        common += ["--protocol", "modest", "--protocol-param", f"s={args.s}"]
        common += [f for kv in args.param for f in ("--protocol-param", kv)]
    n = args.hosts
    argvs = []
    for i in range(len(nodes)):
        argv = [sys.executable, "-m", "phalanx", "node", "run", "--data-dir", str(workdir / f"h{i}")]
        announce = f"/ip4/{bed.address(i)}/tcp/{RELAY_PORT if args.delay else port}"
        listen = f"/ip4/127.0.0.1/tcp/{port}" if args.delay else f"/ip4/0.0.0.0/tcp/{port}"
        argv += ["--listen", listen, "--announce", announce, *common]
        if args.protocol == "dpsgd":
            argv += ["--degree", str(args.degree)]
            argv += ["--alone", "wait"] if i == 0 else ["--bootstrap", nodes[0].address]
        elif i < n - 1:
            argv += [f for j in range(n - 1) if j != i for f in ("--neighbour", nodes[j].address)]
        else:
            argv += ["--bootstrap", nodes[0].address]
        argvs.append(argv)
    state = [Node(i) for i in range(n)]
    t0 = time.monotonic()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    async def run(node: Node, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        stderr = (workdir / f"h{node.index}" / "stderr.log").open("ab")
        proc = await trio.lowlevel.open_process(
            bed.command(node.index, argvs[node.index]), stdout=subprocess.PIPE, stderr=stderr, env=env
        )
        stderr.close()
        node.proc = proc
        task_status.started()
        assert proc.stdout is not None
        with (workdir / f"h{node.index}" / "log.jsonl").open("ab", buffering=0) as log:
            async for line in _lines(proc.stdout):
                log.write(line + b"\n")
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if isinstance(event, dict):
                        node.events.append((time.monotonic() - t0, event))
                        node.changed.set()
                        node.changed = trio.Event()

    async def until(cond: Any) -> None:
        while not cond():
            await trio.sleep(0.2)

    result = 1
    try:
        with trio.move_on_after(args.timeout):
            async with trio.open_nursery() as nursery:
                for node in state[:-1]:
                    await nursery.start(run, node)
                    if node.index == 0:  # the bootstrap node is up (its first log line) before the others
                        await until(lambda: bool(state[0].events))
                first = state[:-1]
                if args.protocol == "dpsgd":
                    await until(lambda: all(nd.mixed() for nd in first))
                    formed = max(nd.mixed()[0] for nd in first)  # type: ignore[index]
                    starts = [nd.events[0][0] for nd in first]
                    print(
                        f"formed: {n - 1} nodes from one address, every one mixing a neighbour's model "
                        f"{formed - max(starts):.1f} s after the last one started (all up after {formed:.1f} s)"
                    )
                await until(lambda: all(len(nd.rounds()) >= args.warm for nd in first))
                joiner = state[-1]
                net_round = max(nd.rounds()[-1]["round"] for nd in first)
                await nursery.start(run, joiner)
                if args.protocol == "dpsgd":
                    await until(lambda: joiner.mixed() is not None)
                    t_in, line = joiner.mixed()  # type: ignore[misc]
                    rounds = sum(1 for e in joiner.rounds() if e["t"] <= line["t"])
                else:
                    # the network's round when the joiner could first announce its Join (it knew members):
                    # counting from its spawn instead adds the rounds its Python and torch imports took
                    await until(
                        lambda: joiner.first("members") is not None or joiner.first("round") is not None
                    )
                    net_known = max(nd.rounds()[-1]["round"] for nd in first)
                    # its runtime started (its "listening" line): the Join went out right then
                    await until(
                        lambda: joiner.first("listening") is not None or joiner.first("round") is not None
                    )
                    net_listening = max(nd.rounds()[-1]["round"] for nd in first)
                    await until(lambda: joiner.first("round") is not None)
                    t_in, line = joiner.first("round")  # type: ignore[misc]
                    # its first round line reports round k - 1 when it got round k's model to train
                    rounds = line["round"] + 1 - net_known
                    print(
                        f"joiner: network at round {net_round} when spawned, {net_known} when it knew members, "
                        f"{net_listening} when it sent its Join; first sampled for round {line['round'] + 1} "
                        f"({line['round'] + 1 - net_listening} rounds after its Join)"
                    )
                t_first = joiner.events[0][0]
                t_members = (joiner.first("members") or (t_first, {}))[0]
                what = "mixed a neighbour's model" if args.protocol == "dpsgd" else "was sampled"
                print(
                    f"joiner: knew members {t_members - t_first:.2f} s after its first log line; {what} "
                    f"{t_in - t_first:.2f} s after it, {rounds} round(s) "
                    f"({'its own round lines' if args.protocol == 'dpsgd' else 'network rounds since it knew members'})"
                )
                result = 0
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            for node in state:
                if node.proc is not None and node.proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(node.proc.pid, signal.SIGKILL)
                    await node.proc.wait()
    if result:
        print(f"join_time: timed out after {args.timeout} s; logs in {workdir}", file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    why = unavailable()
    if why is not None:
        print(f"join_time: error: {why}", file=sys.stderr)
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="join-time-"))
    relays: list[subprocess.Popen[str]] = []
    with NetBed(args.hosts) as bed:
        if args.rate:
            for i in range(args.hosts):
                bed.limit(i, args.rate)
        try:
            if args.delay:
                root = str(Path(__file__).resolve().parents[1])
                for i in range(args.hosts):
                    argv = [sys.executable, "-m", "tests.netbed.delay"]
                    argv += ["--listen", f"{bed.address(i)}:{RELAY_PORT}", "--to", f"127.0.0.1:{PORT}"]
                    argv += ["--delay", str(args.delay / 1000)]
                    relay = subprocess.Popen(
                        bed.command(i, argv),
                        stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL,  # a connection the node drops ends in a traceback there
                        text=True,
                        cwd=root,
                    )
                    relays.append(relay)
                    assert relay.stdout is not None
                    if relay.stdout.readline().strip() != "ready":
                        raise SystemExit(f"join_time: error: the latency relay on host {i} did not start")
            print(
                f"join_time: {args.hosts} hosts, {args.protocol}, tbf {args.rate or 'none'}, "
                f"+{args.delay:.0f} ms each way; logs in {workdir}",
                flush=True,
            )
            return trio.run(main_async, args, bed, workdir)
        finally:
            for relay in relays:  # ours, by PID
                relay.kill()
                relay.wait()


if __name__ == "__main__":
    sys.exit(main())
