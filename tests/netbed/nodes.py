"""Run ``phalanx node run`` processes inside a :class:`~tests.netbed.netns.NetBed`, one per host namespace.

Every node gets its key made up front (so every peer id is known before any process starts), listens on
``/ip4/0.0.0.0/tcp/PORT`` inside its own namespace (the same port on every host: they are separate hosts)
and is told its neighbours' addresses in the bed's subnet. The runner follows each node's JSON log lines,
writes them to ``WORKDIR/h{i}/log.jsonl`` line by line, and always ends the processes it started, by PID.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from phalanx.node.identity import load_or_create_key, peer_id_of
from phalanx.node.netup import _lines

from .netns import NetBed

PORT = 4001


@dataclass(slots=True)
class BedNode:
    index: int
    peer_id: str
    address: str  # the full multiaddr other nodes dial
    pid: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None
    wall: float = 0.0

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == kind]

    @property
    def rounds(self) -> list[dict[str, Any]]:
        return self.of("round")

    @property
    def round_seconds(self) -> float | None:
        """Median seconds between consecutive rounds (the first round includes start-up waits)."""
        times = [e["t"] for e in self.rounds]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        return statistics.median(gaps) if gaps else None


def ring(n: int) -> list[tuple[int, int]]:
    return [(i, (i + 1) % n) for i in range(n)] if n > 2 else [(0, 1)] if n == 2 else []


def complete(n: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def prepare(bed: NetBed, workdir: Path, *, port: int = PORT) -> list[BedNode]:
    """Keys made up front; each node's address is ``port`` on its host (a latency relay's port, if one
    stands in front of the node there)."""
    nodes = []
    for i in range(bed.hosts):
        peer = peer_id_of(load_or_create_key(workdir / f"h{i}" / "node.key"))
        nodes.append(BedNode(index=i, peer_id=peer, address=f"/ip4/{bed.address(i)}/tcp/{port}/p2p/{peer}"))
    return nodes


def node_argv(
    nodes: Sequence[BedNode],
    i: int,
    edges: Sequence[tuple[int, int]],
    workdir: Path,
    extra: Sequence[str],
    *,
    port: int = PORT,
) -> list[str]:
    argv = [
        *(sys.executable, "-m", "phalanx", "node", "run"),
        *("--data-dir", str(workdir / f"h{i}"), "--listen", f"/ip4/0.0.0.0/tcp/{port}"),
        *("--nodes", str(len(nodes)), "--index", str(i), "--metrics-port", "-1"),
    ]
    for a, b in edges:
        if i in (a, b) and a != b:
            argv += ["--neighbour", nodes[b if a == i else a].address]
    return argv + list(extra)


async def run_nodes(
    bed: NetBed,
    nodes: Sequence[BedNode],
    argvs: Sequence[list[str]],
    workdir: Path,
    *,
    timeout: float,
) -> None:
    """Start every node in its namespace, follow it until it exits (or ``timeout``), end it by PID."""
    procs: list[trio.Process] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = trio.current_time()

    async def follow(node: BedNode, proc: trio.Process) -> None:
        assert proc.stdout is not None
        with (workdir / f"h{node.index}" / "log.jsonl").open("ab", buffering=0) as log:
            async for line in _lines(proc.stdout):
                log.write(line + b"\n")
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if isinstance(event, dict):
                        node.events.append(event)
        node.exit_code = await proc.wait()
        node.wall = trio.current_time() - start

    try:
        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                for node, argv in zip(nodes, argvs, strict=True):
                    stderr = (workdir / f"h{node.index}" / "stderr.log").open("ab")
                    proc = await trio.lowlevel.open_process(
                        bed.command(node.index, argv), stdout=subprocess.PIPE, stderr=stderr, env=env
                    )
                    stderr.close()
                    procs.append(proc)
                    node.pid = proc.pid  # 'ip netns exec' execs the command: this is the node's own PID
                    nursery.start_soon(follow, node, proc)
    finally:
        with trio.CancelScope(shield=True):
            for proc in procs:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()
