"""Run a local network of real node processes on 127.0.0.1 (what ``phalanx net up`` does).

The orchestrator creates each node's key first (so every peer id is known before any process starts), picks
free loopback ports, writes ``addressbook.toml`` and ``topology.txt`` into the run directory, starts one
``phalanx node run`` process per node with its neighbours' multiaddrs, and follows every node by reading
its JSON log lines from stdout. It SIGKILLs nodes at the rounds asked for, and ends when every node that is
still meant to run has finished (or at the deadline). Children are always reaped: on success, on error and on
Ctrl-C they get SIGTERM, then SIGKILL after a grace period.

This module does not import the simulator: the caller passes the graph as an edge list.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from phalanx.node.identity import load_or_create_key, peer_id_of

GRACE = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class NetSpec:
    n: int
    edges: Sequence[tuple[int, int]]
    rounds: int
    workdir: Path
    byzantine: dict[int, str] = field(default_factory=dict)
    kills: dict[int, int] = field(default_factory=dict)  # node -> SIGKILL once it completed this round
    node_args: Sequence[str] = ()  # flags every node gets (dataset, model, rule, ...)
    timeout: float = 600.0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"need at least 1 node, got {self.n}")
        for i in [*self.byzantine, *self.kills]:
            if not 0 <= i < self.n:
                raise ValueError(f"node {i} out of range for {self.n} nodes (0..{self.n - 1})")
        for a, b in self.edges:
            if not (0 <= a < self.n and 0 <= b < self.n):
                raise ValueError(f"edge ({a}, {b}) names a node outside 0..{self.n - 1}")


@dataclass(slots=True)
class NodeRecord:
    index: int
    peer_id: str
    address: str
    role: str = "honest"
    pid: int = 0
    metrics_port: int = -1
    rounds: list[dict[str, Any]] = field(default_factory=list)  # the node's "round" log records
    rejected: int = 0
    finished: bool = False
    killed_at: int | None = None
    exit_code: int | None = None
    final: dict[str, Any] = field(default_factory=dict)  # counters logged when the node stopped

    @property
    def last(self) -> dict[str, Any]:
        return self.rounds[-1] if self.rounds else {}

    def counter(self, key: str) -> int:
        """A counter at the end: from the node's "stopped" line, else its last round line."""
        return int(self.final.get(key, self.last.get(key, 0)))


@dataclass(slots=True)
class NetResult:
    nodes: list[NodeRecord]
    wall_time: float
    timed_out: bool = False


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections (Linux; a common default elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(n: int) -> list[int]:
    """n distinct loopback ports that are free now and that no outgoing connection will take.

    Ports are picked *below* the kernel's ephemeral range: a port merely reserved by binding port 0
    and closing it again is back in the ephemeral pool, and the first nodes' outgoing dials to their
    neighbours could take it before the node meant to listen on it starts (seen as a node failing
    to listen at start-up).
    """
    low, _ = _ephemeral_range()
    first = 10000 if low > 11000 else 1024
    candidates = list(range(first, low))
    random.SystemRandom().shuffle(candidates)
    ports: list[int] = []
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            return ports
    raise OSError(f"found only {len(ports)} free loopback ports below {low} for {n} nodes")


def prepare(spec: NetSpec) -> list[NodeRecord]:
    """Keys, ports, address book and topology file; returns one record per node."""
    spec.workdir.mkdir(parents=True, exist_ok=True)
    ports = free_ports(spec.n)
    records = []
    for i in range(spec.n):
        pid = peer_id_of(load_or_create_key(spec.workdir / f"node-{i}" / "node.key"))
        addr = f"/ip4/127.0.0.1/tcp/{ports[i]}/p2p/{pid}"
        role = f"byzantine:{spec.byzantine[i]}" if i in spec.byzantine else "honest"
        records.append(NodeRecord(index=i, peer_id=pid, address=addr, role=role))
    book = "[peers]\n" + "".join(f'"{r.index}" = "{r.address}"\n' for r in records)
    (spec.workdir / "addressbook.toml").write_text(book)
    (spec.workdir / "topology.txt").write_text("".join(f"{a} {b}\n" for a, b in spec.edges))
    return records


def node_command(spec: NetSpec, record: NodeRecord) -> list[str]:
    i = record.index
    neighbours = sorted({b if a == i else a for a, b in spec.edges if i in (a, b) and a != b})
    port = record.address.split("/tcp/")[1].split("/")[0]
    cmd = [
        sys.executable,
        "-m",
        "phalanx",
        "node",
        "run",
        "--data-dir",
        str(spec.workdir / f"node-{i}"),
        "--listen",
        f"/ip4/127.0.0.1/tcp/{port}",
        "--nodes",
        str(spec.n),
        "--index",
        str(i),
        "--rounds",
        str(spec.rounds),
        "--metrics-port",
        "0",
    ]
    addresses = {r: line for r, line in enumerate(_addresses(spec))}
    for j in neighbours:
        cmd += ["--neighbour", addresses[j]]
    if not neighbours:
        cmd += ["--alone", "train"]  # an isolated node of the topology: it trains alone, and says so
    if i in spec.byzantine:
        cmd += ["--byzantine", spec.byzantine[i]]
    return cmd + list(spec.node_args)


def _addresses(spec: NetSpec) -> list[str]:
    import tomllib

    peers = tomllib.loads((spec.workdir / "addressbook.toml").read_text())["peers"]
    return [peers[str(i)] for i in range(spec.n)]


async def _lines(stream: trio.abc.ReceiveStream) -> Any:
    buf = b""
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            if buf:
                yield buf
            return
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            yield line


async def run_network(
    spec: NetSpec, *, on_event: Callable[[NodeRecord, dict[str, Any]], None] | None = None
) -> NetResult:
    """Start the network, follow it to the end, reap every child. Returns what each node reported."""
    records = prepare(spec)
    procs: dict[int, trio.Process] = {}
    start = trio.current_time()
    timed_out = False
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    async def follow(record: NodeRecord, proc: trio.Process) -> None:
        assert proc.stdout is not None
        with (spec.workdir / f"node-{record.index}" / "log.jsonl").open("ab") as raw:
            async for line in _lines(proc.stdout):
                raw.write(line + b"\n")
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(event, dict):
                    continue
                kind = event.get("event")
                if kind == "listening":
                    record.metrics_port = int(event.get("metrics_port", -1))
                elif kind == "round":
                    record.rounds.append(event)
                    kill_at = spec.kills.get(record.index)
                    if kill_at is not None and record.killed_at is None and event["round"] >= kill_at:
                        record.killed_at = event["round"]
                        _signal(proc, signal.SIGKILL)
                elif kind == "rejected":
                    record.rejected += 1
                elif kind == "finished":
                    record.finished = True
                elif kind == "stopped":
                    record.final = event
                if on_event is not None:
                    on_event(record, event)
        record.exit_code = await proc.wait()

    def done() -> bool:
        return all(r.finished or r.killed_at is not None or r.exit_code is not None for r in records)

    try:
        async with trio.open_nursery() as nursery:
            for record in records:
                node_dir = spec.workdir / f"node-{record.index}"
                node_dir.mkdir(parents=True, exist_ok=True)
                stderr = (node_dir / "stderr.log").open("ab")
                proc = await trio.lowlevel.open_process(
                    node_command(spec, record),
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    env=env,
                    start_new_session=True,  # Ctrl-C reaches us only; we stop the children ourselves
                )
                stderr.close()
                procs[record.index] = proc
                record.pid = proc.pid
                nursery.start_soon(follow, record, proc)
            nursery.start_soon(_interrupt_on_sigterm)
            with trio.move_on_after(spec.timeout) as scope:
                while not done():
                    await trio.sleep(0.05)
            timed_out = scope.cancelled_caught
            # Nodes linger a moment after their last round, then exit; give them the grace period.
            with trio.move_on_after(GRACE):
                while any(r.exit_code is None and r.killed_at is None for r in records):
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await stop_all(list(procs.values()))
    return NetResult(nodes=records, wall_time=trio.current_time() - start, timed_out=timed_out)


async def _interrupt_on_sigterm() -> None:
    """SIGTERM to the orchestrator stops the network like Ctrl-C does (children reaped in ``finally``)."""
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            raise KeyboardInterrupt


def _signal(proc: trio.Process, sig: int) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)


async def stop_all(procs: list[trio.Process]) -> None:
    """SIGTERM every live child, wait up to GRACE seconds, SIGKILL the rest, and reap them all."""
    for proc in procs:
        _signal(proc, signal.SIGTERM)
    with trio.move_on_after(GRACE):
        for proc in procs:
            await proc.wait()
    for proc in procs:
        _signal(proc, signal.SIGKILL)
        await proc.wait()


def rows(result: NetResult, rounds: int) -> list[dict[str, Any]]:
    """Per-round rows over the honest nodes, in the simulator's schema (``round`` is 0-based)."""
    out = []
    for r in range(1, rounds + 1):
        accs, losses, live, sent, messages = [], [], 0, 0, 0
        for node in result.nodes:
            upto = [e for e in node.rounds if e["round"] <= r]
            if r == rounds and node.final:  # the run's totals include what left after the last round line
                sent += node.counter("bytes_out")
                messages += node.counter("messages_out")
            elif upto:
                sent += upto[-1].get("bytes_out", 0)
                messages += upto[-1].get("messages_out", 0)
            at = next((e for e in node.rounds if e["round"] == r), None)
            if at is None:
                continue
            live += 1
            if node.role == "honest" and at.get("accuracy") is not None:
                accs.append(at["accuracy"])
                losses.append(at.get("loss") or math.nan)
        out.append(
            {
                "round": r - 1,
                "time": max(
                    (e["t"] for n in result.nodes for e in n.rounds if e["round"] == r), default=None
                ),
                "acc_mean": sum(accs) / len(accs) if accs else None,
                "acc_min": min(accs) if accs else None,
                "acc_max": max(accs) if accs else None,
                "loss_mean": sum(losses) / len(losses) if losses else None,
                "consensus": None,
                "bytes": sent,
                "messages": messages,
                "live": live,
            }
        )
    return out


def node_table(result: NetResult) -> str:
    header = f"{'node':>4}  {'peer id':<14}  {'role':<18}  {'rounds':>6}  {'accuracy':>8}  {'MB in':>7}  {'MB out':>7}  {'rejected':>8}  state"
    lines = [header, "-" * len(header)]
    for n in result.nodes:
        last = n.last
        acc = last.get("accuracy")
        state = (
            f"killed@{n.killed_at}"
            if n.killed_at is not None
            else "finished"
            if n.finished
            else f"exit {n.exit_code}"
            if n.exit_code not in (None, 0)
            else "running"
        )
        lines.append(
            f"{n.index:>4}  {n.peer_id[-14:]:<14}  {n.role:<18}  {last.get('round', 0):>6}  "
            f"{'-' if acc is None else f'{acc:.4f}':>8}  {n.counter('bytes_in') / 1e6:>7.2f}  "
            f"{n.counter('bytes_out') / 1e6:>7.2f}  {n.rejected:>8}  {state}"
        )
    return "\n".join(lines)
