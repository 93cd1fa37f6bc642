"""A live MoDeST network of real ``phalanx node run --protocol modest`` processes on 127.0.0.1, started once
and shared by several tests (a module-scoped fixture), and the outsider's attacks on it.

The processes are followed by threads (one per node, reading its JSON log lines), so the network outlives
any one test's trio run; a test waits on a condition the followers notify at every line, never on a clock.
Only a round's sample reports a MoDeST round, so the network's progress is the newest round any node
reported. Used by ``tests/adversarial/test_modest_live.py`` and ``scripts/red_team.py``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import trio

from phalanx.gossip.identity import Signer
from phalanx.gossip.membership import ViewDelta
from phalanx.gossip.messages import AggregatedModel, Message, Pong, TrainedModel, ViewUpdate, encode
from phalanx.gossip.wire import frame
from phalanx.node.identity import load_or_create_key, peer_id_of
from phalanx.node.metrics import fetch
from phalanx.node.netup import free_ports
from phalanx.node.transport import Libp2pTransport, TransportError

from .harness import DIM

MODEST_ARGS = [
    "--dataset", "blobs", "--model", "logreg", "--lr", "0.05", "--eval-every", "1", "--rounds", "0",
    "--protocol", "modest", "--protocol-param", "s=2", "--protocol-param", "inactivity=10",
]  # fmt: skip


WARM_UP = 10  # rounds: blobs + logreg reaches its accuracy well before
AHEAD = 40  # rounds: how far ahead of the network the pushed models go


@dataclass
class LiveNode:
    """One node process, followed by a thread: its log lines, RSS and descriptors."""

    name: str
    address: str
    peer_id: str
    proc: subprocess.Popen[bytes] | None = None
    metrics_port: int = -1
    events: list[dict[str, Any]] = field(default_factory=list)
    peak_rss_mb: float = 0.0

    def follow(self, changed: threading.Condition) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                with changed:
                    self.events.append(event)
                    with contextlib.suppress(OSError):
                        self.peak_rss_mb = max(self.peak_rss_mb, self.rss_mb())
                    changed.notify_all()
        with changed:
            changed.notify_all()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e.get("event") == kind]

    @property
    def round(self) -> int:
        rounds = self.of("round")
        return int(rounds[-1]["round"]) if rounds else -1

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return math.nan

    async def status(self) -> dict[str, Any]:
        return dict(json.loads(await fetch(self.metrics_port, "/status")))


@dataclass
class LiveNetwork:
    nodes: list[LiveNode]
    changed: threading.Condition = field(default_factory=threading.Condition)

    @property
    def round(self) -> int:
        """The network's newest round: the newest any node reported (only a round's sample reports it)."""
        return max(n.round for n in self.nodes)

    def worst_accuracy(self, since_round: int) -> float:
        """The lowest accuracy any node reported for a round from ``since_round`` on (NaN: none yet): one
        poisoned aggregate shows here, even if the next honest rounds wash it out."""
        accs = [
            float(e["accuracy"])
            for n in self.nodes
            for e in n.of("round")
            if e["round"] >= since_round and e.get("accuracy") is not None
        ]
        return min(accs) if accs else math.nan

    def _wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(
                lambda: (
                    predicate() or any(n.proc is not None and n.proc.poll() is not None for n in self.nodes)
                ),
                timeout,
            )

    async def until(self, predicate: Callable[[], bool], *, timeout: float = 20.0) -> None:
        """Wait (on log lines, not a clock) until ``predicate()`` holds; fails if a node exits."""
        await trio.to_thread.run_sync(self._wait, predicate, timeout)
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is not None:
                raise AssertionError(f"{n.name} exited with {n.proc.returncode}")
        if not predicate():
            raise trio.TooSlowError

    async def rounds_take(self, rounds: int, *, timeout: float = 20.0) -> float:
        """Seconds the network takes to complete ``rounds`` more rounds from now."""
        start, t0 = self.round, trio.current_time()
        await self.until(lambda: self.round >= start + rounds, timeout=timeout)
        return trio.current_time() - t0


@contextmanager
def modest_network(workdir: Path, n: int = 4) -> Iterator[LiveNetwork]:
    """``n`` honest MoDeST nodes, each with all others as its initial membership, past their warm-up."""
    ports = free_ports(n)
    nodes = []
    for i, port in enumerate(ports):
        pid = peer_id_of(load_or_create_key(workdir / f"node-{i}" / "node.key"))
        nodes.append(LiveNode(f"node-{i}", f"/ip4/127.0.0.1/tcp/{port}/p2p/{pid}", pid))
    net = LiveNetwork(nodes)
    threads = []
    try:
        for i, node in enumerate(nodes):
            neighbours = [
                arg for other in nodes if other is not node for arg in ("--neighbour", other.address)
            ]
            cmd = [
                sys.executable, "-m", "phalanx", "node", "run", *MODEST_ARGS,
                "--index", str(i), "--nodes", str(n), "--data-dir", str(workdir / f"node-{i}"),
                "--listen", f"/ip4/127.0.0.1/tcp/{ports[i]}", "--metrics-port", "0", *neighbours,
            ]  # fmt: skip
            with (workdir / f"node-{i}.stderr").open("ab") as stderr:
                node.proc = subprocess.Popen(
                    cmd,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            thread = threading.Thread(target=node.follow, args=(net.changed,), daemon=True)
            thread.start()
            threads.append(thread)
        net._wait(lambda: all(node.of("listening") for node in nodes), 60)
        for node in nodes:
            listening = node.of("listening")
            assert listening, f"{node.name} never listened: see {workdir}/{node.name}.stderr"
            node.metrics_port = int(listening[0]["metrics_port"])
        net._wait(lambda: net.round >= WARM_UP, 60)
        assert net.round >= WARM_UP, (
            f"the MoDeST network never reached round {WARM_UP}: see {workdir}/*.stderr"
        )
        yield net
    finally:
        for node in nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
        for node in nodes:
            if node.proc is not None:
                node.proc.wait()
        for thread in threads:
            thread.join(timeout=5)


# ---------------------------------------------------------------- the attacks on MoDeST


def forged_view(ids: list[str], counter: int, signer: Signer) -> ViewDelta:
    """A view listing ``ids`` at ``counter``, every record signed by the attacker's own key (not theirs)."""
    return ViewDelta(
        tuple(ids), (0,) * len(ids), (counter,) * len(ids), tuple(signer.sign(counter, 0) for _ in ids)
    )


def attack_bodies(net: LiveNetwork, signer: Signer) -> dict[str, list[bytes]]:
    """The framed messages of each attack of issue 13 on MoDeST, aimed at the network's current round.

    The network completes a round in tens of milliseconds, so the models are pushed for a spread of
    rounds ahead of it: a model for a round already passed is stale for any code, not a test of it."""
    honest = [n.peer_id for n in net.nodes]
    k = max(net.round, 0)
    poison = torch.full((DIM,), 1e3)
    fakes = [f"12D3KooWfake{i:08d}" for i in range(5000)]
    messages: dict[str, list[Message]] = {
        # the round raised to 2^48 by one unsolicited answer
        "modest-pong": [Pong(round=k, nonce=1, latest=2**48)],
        # every honest peer "left" (an even counter), at a counter no rejoin could ever beat
        "modest-evict": [ViewUpdate(round=k, view=forged_view(honest, 2**32, signer))],
        # 5,000 members that do not exist, for everyone to ping
        "modest-fake-ids": [ViewUpdate(round=k, view=forged_view(fakes, 1, signer))],
        # the model of rounds ahead, from a peer that is nobody's aggregator
        "modest-aggregate": [AggregatedModel(round=r, params=poison) for r in range(k + 2, k + AHEAD, 4)],
        # trained models of rounds ahead, from a peer that is nobody's trainer
        "modest-trained": [TrainedModel(round=r, params=poison) for r in range(k + 2, k + AHEAD, 2)],
    }
    return {name: [frame(encode(m)) for m in ms] for name, ms in messages.items()}


async def send_to_all(
    host: Libp2pTransport, net: LiveNetwork, frames: list[bytes], *, times: int = 1
) -> None:
    """Every frame to every node, ``times`` over, one stream each (concurrently per node)."""

    async def one(peer: str, data: bytes) -> None:
        with contextlib.suppress(TransportError):  # a node that banned the attacker resets its streams
            await host.send_raw(peer, data)

    for _ in range(times):
        for data in frames:
            async with trio.open_nursery() as nursery:
                for node in net.nodes:
                    nursery.start_soon(one, node.peer_id, data)
