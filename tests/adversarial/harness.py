"""Real victims for the red team: honest ``phalanx node run`` processes on 127.0.0.1 that are each other's
neighbours, followed line by line, and outsider libp2p hosts with fresh keys (never configured anywhere).

Used by ``tests/adversarial`` and ``scripts/red_team.py``. Everything is observed from outside, as an
operator would: the JSON log lines, ``/status``, and the process's RSS and open descriptors in ``/proc``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

from phalanx.gossip.wire import Limits
from phalanx.node.identity import load_or_create_key, peer_id_of
from phalanx.node.metrics import fetch
from phalanx.node.netup import _lines, free_ports
from phalanx.node.transport import Libp2pTransport, open_libp2p_transport

DIM = 32 * 10 + 10  # blobs + logreg
NODE_ARGS = ["--dataset", "blobs", "--model", "logreg", "--lr", "0.05", "--eval-every", "0", "--rounds", "0"]


@dataclass
class Victim:
    """One node process and everything it has logged so far."""

    name: str
    address: str
    peer_id: str
    proc: trio.Process | None = None
    metrics_port: int = -1
    events: list[dict[str, Any]] = field(default_factory=list)
    peak_rss_mb: float = 0.0  # sampled at every log line (each round writes one)
    peak_fds: int = 0
    _changed: trio.Event = field(default_factory=trio.Event)

    async def follow(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in _lines(self.proc.stdout):
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(line))
                self.sample()
                self._changed.set()
                self._changed = trio.Event()
        self._changed.set()

    def sample(self) -> None:
        with contextlib.suppress(OSError):
            self.peak_rss_mb = max(self.peak_rss_mb, self.rss_mb())
            self.peak_fds = max(self.peak_fds, self.fds())

    def reset_peaks(self) -> None:
        self.peak_rss_mb, self.peak_fds = self.rss_mb(), self.fds()

    async def until(self, predicate: Callable[[], bool], *, timeout: float = 20.0) -> None:
        """Wait (on log lines, not a clock) until ``predicate()`` holds."""
        with trio.fail_after(timeout):
            while not predicate():
                if self.proc is not None and self.proc.returncode is not None:
                    raise AssertionError(f"{self.name} exited with {self.proc.returncode}")
                await self._changed.wait()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == kind]

    @property
    def round(self) -> int:
        rounds = self.of("round")
        return int(rounds[-1]["round"]) if rounds else 0

    def rejected(self, reason: str | None = None, peer: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.of("rejected")
            if (reason is None or e.get("reason") == reason) and (peer is None or e.get("peer") == peer)
        ]

    def banned(self, peer: str) -> bool:
        return any(e.get("peer") == peer for e in self.of("banned"))

    async def status(self) -> dict[str, Any]:
        return dict(json.loads(await fetch(self.metrics_port, "/status")))

    def _proc_file(self, name: str) -> Path:
        assert self.proc is not None
        return Path(f"/proc/{self.proc.pid}/{name}")

    def rss_mb(self) -> float:
        for line in self._proc_file("status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return math.nan

    def fds(self) -> int:
        return len(os.listdir(self._proc_file("fd")))

    async def rounds_take(self, rounds: int, *, timeout: float = 20.0) -> float:
        """Seconds this node takes to complete ``rounds`` more rounds from now."""
        start, t0 = self.round, trio.current_time()
        await self.until(lambda: self.round >= start + rounds, timeout=timeout)
        return trio.current_time() - t0


def _listening(v: Victim) -> bool:
    return bool(v.of("listening"))


def _past_round(v: Victim, r: int) -> bool:
    return v.round >= r


@asynccontextmanager
async def honest_pair(workdir: Path, *, round_timeout: float = 2.0) -> AsyncIterator[tuple[Victim, Victim]]:
    """Two honest nodes, each the other's one neighbour, both past their first round."""
    ports = free_ports(2)
    victims = []
    for i, port in enumerate(ports):
        pid = peer_id_of(load_or_create_key(workdir / f"node-{i}" / "node.key"))
        victims.append(Victim(f"node-{i}", f"/ip4/127.0.0.1/tcp/{port}/p2p/{pid}", pid))
    async with trio.open_nursery() as nursery:
        try:
            for i, v in enumerate(victims):
                other = victims[1 - i]
                stderr = (workdir / f"node-{i}.stderr").open("ab")
                v.proc = await trio.lowlevel.open_process(
                    [
                        sys.executable,
                        "-m",
                        "phalanx",
                        "node",
                        "run",
                        *NODE_ARGS,
                        "--index",
                        str(i),
                        "--nodes",
                        "2",
                        "--data-dir",
                        str(workdir / f"node-{i}"),
                        "--listen",
                        f"/ip4/127.0.0.1/tcp/{ports[i]}",
                        "--neighbour",
                        other.address,
                        "--round-timeout",
                        str(round_timeout),
                        "--metrics-port",
                        "0",
                    ],
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
                stderr.close()
                nursery.start_soon(v.follow)
            for v in victims:
                await v.until(partial(_listening, v), timeout=60)
                v.metrics_port = int(v.of("listening")[0]["metrics_port"])
            for v in victims:
                await v.until(partial(_past_round, v, 2), timeout=60)
            yield victims[0], victims[1]
        finally:
            for v in victims:
                if v.proc is not None and v.proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        v.proc.kill()
            with trio.CancelScope(shield=True):
                for v in victims:
                    if v.proc is not None:
                        await v.proc.wait()
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def outsiders(victim: Victim, n: int = 1) -> AsyncIterator[list[tuple[Libp2pTransport, str]]]:
    """``n`` libp2p hosts with fresh keys, each with the victim's address; (host, the victim's name)."""
    from libp2p.crypto.ed25519 import create_new_key_pair

    async with contextlib.AsyncExitStack() as stack:
        hosts = []
        for _ in range(n):
            host = await stack.enter_async_context(
                open_libp2p_transport(create_new_key_pair(), limits=Limits(dim=DIM), send_timeout=5.0)
            )
            hosts.append((host, host.add_address(victim.address)))
        yield hosts
