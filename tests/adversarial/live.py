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


# ---------------------------------------------------------------- the runner

# what each attack must leave in every node's protocol counters, and whether it is a strike
COUNTED = {
    "modest-pong": ("rejected_unsolicited", False),  # answers nobody asked for count, but are not news
    "modest-evict": ("rejected_unsolicited", True),
    "modest-fake-ids": ("rejected_unsolicited", True),
    "modest-aggregate": ("rejected_not_sampled", True),
    "modest-trained": ("rejected_not_sampled", True),
}
ROUNDS = 4  # rounds measured before each attack
# a halted network never completes them; a live one takes a second or two, or a few more when one of its
# pings times out (MoDeST replaces a silent candidate after ping_timeout) on a loaded machine
MAX_SECONDS = 30.0
MAX_RSS_GROWTH = 50.0  # MB, per node


@dataclass
class ModestOutcome:
    attack: str
    counted: int  # the attack's counter, summed over the nodes
    struck: int  # nodes that logged a rejection (a strike) of the attacker
    nodes: int
    seconds_before: float  # for ROUNDS network rounds just before the attack
    seconds_during: float  # for AHEAD + ROUNDS network rounds from the attack on (inf: never)
    acc_before: float  # worst accuracy reported in the rounds before / after
    acc_after: float
    rss_growth: float  # MB, the largest of the nodes
    problems: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return "held" if not self.problems else "FAILED: " + "; ".join(self.problems)


def _counter(status: dict[str, object], name: str) -> float:
    counters = status.get("protocol_counters", {})
    return float(counters.get(name, 0)) if isinstance(counters, dict) else 0.0


async def run_modest_attack(net: LiveNetwork, attack: str) -> ModestOutcome:
    """Send ``attack`` (twice) from an outsider with a fresh key to every node of a live network; check that
    the network kept completing rounds, was not poisoned, did not grow, and counted (and struck) it."""
    from libp2p.crypto.ed25519 import create_new_key_pair

    from phalanx.gossip.wire import Limits
    from phalanx.node.transport import open_libp2p_transport

    name, strikes = COUNTED[attack]
    before_s = await net.rounds_take(ROUNDS, timeout=MAX_SECONDS)
    before = [await n.status() for n in net.nodes]
    rss_before = [n.rss_mb() for n in net.nodes]
    acc_round = net.round
    acc_before = net.worst_accuracy(acc_round - ROUNDS)
    problems: list[str] = []
    async with open_libp2p_transport(create_new_key_pair(), limits=Limits(dim=DIM), send_timeout=5.0) as host:
        for n in net.nodes:
            host.add_address(n.address)
        signer = Signer.from_seed(host.peer_id, b"\x42" * 32)
        t0 = trio.current_time()
        await send_to_all(host, net, attack_bodies(net, signer)[attack], times=2)
        try:
            # past every round a pushed model named: a poisoned one has been reported by then
            await net.until(lambda: net.round >= acc_round + AHEAD + ROUNDS, timeout=MAX_SECONDS)
            during_s = trio.current_time() - t0
        except trio.TooSlowError:
            during_s = math.inf
            problems.append(f"the network stopped completing rounds (round {net.round})")
    after = [await n.status() for n in net.nodes]
    acc_after = net.worst_accuracy(acc_round + 1)
    if not acc_after >= min(acc_before, 0.9) - 0.2:
        problems.append(f"accuracy {acc_before:.3f} -> {acc_after:.3f}")
    growth = max(n.rss_mb() - rss for n, rss in zip(net.nodes, rss_before, strict=True))
    if growth > MAX_RSS_GROWTH:
        problems.append(f"RSS grew by {growth:.0f} MB")
    counted = [int(_counter(a, name) - _counter(b, name)) for b, a in zip(before, after, strict=True)]
    if min(counted) < 2:
        problems.append(f"not counted as {name} by every node: {counted}")
    struck = sum(any(e.get("peer") == host.peer_id for e in n.of("rejected")) for n in net.nodes)
    if struck != (len(net.nodes) if strikes else 0):
        problems.append(f"{struck} of {len(net.nodes)} nodes struck the attacker")
    return ModestOutcome(
        attack=attack,
        counted=sum(counted),
        struck=struck,
        nodes=len(net.nodes),
        seconds_before=before_s,
        seconds_during=during_s,
        acc_before=acc_before,
        acc_after=acc_after,
        rss_growth=growth,
        problems=problems,
    )


# ---------------------------------------------------------------- many keys, half a frame each

HALF_FRAME_KEYS = 24
HALF_FRAME_BYTES = 2_000_000  # of a frame announced at the limit (16 MB under MoDeST's view limits)
MAX_HALF_FRAME_GROWTH = 20.0  # MB: without a pool for strangers the 24 keys hold 48 MB until they stall


async def half_frames(net: LiveNetwork) -> tuple[float, list[str]]:
    """``HALF_FRAME_KEYS`` fresh keys each send the first 2 MB of a frame announced at the victim's frame
    limit and stop, all at once: each is within its own stranger budget, so only the strangers' pool (the
    global budget) stops them holding 48 MB. Returns the victim's RSS growth and the problems seen."""
    from libp2p.crypto.ed25519 import create_new_key_pair

    from phalanx.gossip.wire import FRAME_HEADER, Limits
    from phalanx.node.transport import open_libp2p_transport

    victim = net.nodes[0]
    limit = Limits(dim=DIM).max_frame
    data = FRAME_HEADER.pack(limit) + b"\1" * HALF_FRAME_BYTES
    problems: list[str] = []
    rss_before = victim.rss_mb()
    start = net.round
    # The attacker writes py-libp2p's default 64 KiB yamux frames. This process's transports are tuned to
    # 1 MiB frames (node/libp2p_tuning.py), and the victim's py-libp2p reads each DATA frame whole before any
    # of phalanx's budgets sees a byte: 24 keys writing 1 MiB frames at once take the victim's RSS up by
    # 40-90 MB of transient buffers, whatever the strangers' pool does (docs/security.md, "Out of scope").
    from libp2p.stream_muxer.yamux import yamux

    stack = contextlib.AsyncExitStack()
    stack.callback(setattr, yamux, "MAX_MESSAGE_SIZE", yamux.MAX_MESSAGE_SIZE)
    async with stack:
        hosts = []
        for _ in range(HALF_FRAME_KEYS):
            host = await stack.enter_async_context(
                open_libp2p_transport(create_new_key_pair(), limits=Limits(dim=DIM), send_timeout=5.0)
            )
            hosts.append((host, host.add_address(victim.address)))
        yamux.MAX_MESSAGE_SIZE = 64 * 1024  # after the transports' own tuning (restored on the way out)

        async def one(host: Libp2pTransport, name: str) -> None:
            with contextlib.suppress(TransportError):  # refused: the victim resets the stream
                await host.send_raw(name, data, close=False)

        async with trio.open_nursery() as nursery:
            for host, name in hosts:
                nursery.start_soon(one, host, name)
        growth = victim.rss_mb() - rss_before  # every stream written or refused, none stalled yet
        try:
            await net.until(lambda: net.round >= start + ROUNDS, timeout=MAX_SECONDS)
        except trio.TooSlowError:
            problems.append(f"the network stopped completing rounds (round {net.round})")
        growth = max(growth, victim.rss_mb() - rss_before)
    if growth > MAX_HALF_FRAME_GROWTH:
        problems.append(f"the victim's RSS grew by {growth:.0f} MB")
    return growth, problems
