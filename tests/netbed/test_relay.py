"""Circuit Relay v2 between real nodes (node/relay.py): A and B on two subnets that nothing routes between,
R on both. A and B cannot reach each other; each reserves a slot on R (``--relay``), R relays
(``--relay-service``), and A and B are D-PSGD neighbours through their ``/p2p-circuit`` addresses.

Layout (no bridge: two veth pairs, R does not forward between them)::

    TOKEN-h0 (A) eth0 10.a.b.1/24  <->  TOKEN-h1 (R) eth0 10.a.b.2/24
    TOKEN-h2 (B) eth0 10.a.c.1/24  <->  TOKEN-h1 (R) eth1 10.a.c.2/24

Skipped, with the reason, where namespaces cannot be made."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .netns import _ip, remove_orphans, unavailable
from .nodes import PORT, prepare, run_nodes

WHY_NOT = unavailable()
pytestmark = [
    pytest.mark.network,
    pytest.mark.skipif(WHY_NOT is not None, reason=f"no network namespaces here: {WHY_NOT}"),
]


@dataclass(slots=True)
class SplitBed:
    """Hosts 0 (A) and 2 (B) each linked to host 1 (R) only, on two subnets; R does not forward."""

    hosts: int = 3
    token: str = field(default_factory=lambda: f"pxb{os.getpid()}x{secrets.token_hex(3)}")
    a: int = field(default_factory=lambda: secrets.randbelow(250) + 1)
    b: int = field(default_factory=lambda: secrets.randbelow(120) + 1)
    made: list[str] = field(default_factory=list)

    def namespace(self, i: int) -> str:
        return f"{self.token}-h{i}"

    def address(self, i: int, side: int = 0) -> str:
        """A (0) and B (2) have one address; R (1) has one on A's subnet (side 0) and one on B's (side 1)."""
        subnet = self.b + (1 if i == 2 or (i == 1 and side == 1) else 0) * 100
        return f"10.{self.a}.{subnet}.{1 if i != 1 else 2}"

    def command(self, i: int, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(i), *argv]

    def create(self) -> SplitBed:
        remove_orphans()
        try:
            for i in range(3):
                _ip("netns", "add", self.namespace(i))
                self.made.append(self.namespace(i))
                _ip("-n", self.namespace(i), "link", "set", "lo", "up")
            r = self.namespace(1)
            for end, dev, side in ((0, "eth0", 0), (2, "eth1", 1)):
                ns = self.namespace(end)
                _ip("-n", r, "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _ip("-n", r, "addr", "add", f"{self.address(1, side)}/24", "dev", dev)
                _ip("-n", r, "link", "set", dev, "up")
                _ip("-n", ns, "addr", "add", f"{self.address(end)}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        while self.made:
            _ip("netns", "del", self.made.pop(), check=False)


@pytest.fixture
def split() -> Iterator[SplitBed]:
    bed = SplitBed().create()
    try:
        yield bed
    finally:
        bed.close()


def _probe(bed: SplitBed, i: int, address: str) -> str:
    probe = "import socket,sys; socket.create_connection((sys.argv[1], 9), timeout=3)"
    done = subprocess.run(bed.command(i, ["python3", "-c", probe, address]), capture_output=True, text=True)
    return done.stderr


def test_a_and_b_cannot_reach_each_other_but_both_reach_r(split: SplitBed) -> None:
    assert "ConnectionRefusedError" in _probe(split, 0, split.address(1, 0))
    assert "ConnectionRefusedError" in _probe(split, 2, split.address(1, 1))
    assert "ConnectionRefusedError" not in _probe(split, 0, split.address(2))  # unreachable, not refused
    assert "ConnectionRefusedError" not in _probe(split, 2, split.address(0))


@pytest.mark.slow
async def test_dpsgd_neighbours_through_a_relay(split: SplitBed, tmp_path: Path) -> None:
    """A-R and R-B are direct edges, A-B goes through R's relay: every node completes its rounds and takes
    both neighbours' models in most of them, so the relayed edge carried models both ways. (Under load a
    node may start before the other end's reservation exists: its first round then times out with one
    model, and the buffered models complete the next rounds at once.)"""
    nodes = prepare(split, tmp_path)  # type: ignore[arg-type]  # SplitBed: the same address/command
    a, r, b = (n.peer_id for n in nodes)
    r_for_a = f"/ip4/{split.address(1, 0)}/tcp/{PORT}/p2p/{r}"
    r_for_b = f"/ip4/{split.address(1, 1)}/tcp/{PORT}/p2p/{r}"
    a_addr = f"/ip4/{split.address(0)}/tcp/{PORT}/p2p/{a}"
    b_addr = f"/ip4/{split.address(2)}/tcp/{PORT}/p2p/{b}"
    extra = ["--dataset", "blobs", "--model", "logreg", "--rounds", "4", "--round-timeout", "20"]

    def argv(i: int, more: list[str]) -> list[str]:
        return [
            *(sys.executable, "-m", "phalanx", "node", "run", "--data-dir", str(tmp_path / f"h{i}")),
            *("--listen", f"/ip4/0.0.0.0/tcp/{PORT}", "--nodes", "3", "--index", str(i)),
            *("--metrics-port", "-1", "--linger", "5", *extra, *more),
        ]

    argvs = [
        argv(
            0, ["--relay", r_for_a, "--neighbour", r_for_a, "--neighbour", f"{r_for_a}/p2p-circuit/p2p/{b}"]
        ),
        argv(1, ["--relay-service", "--neighbour", a_addr, "--neighbour", b_addr]),
        argv(
            2, ["--relay", r_for_b, "--neighbour", r_for_b, "--neighbour", f"{r_for_b}/p2p-circuit/p2p/{a}"]
        ),
    ]
    await run_nodes(split, nodes, argvs, tmp_path, timeout=90)  # type: ignore[arg-type]
    (hello_a,) = nodes[0].of("listening")
    assert f"{r_for_a}/p2p-circuit/p2p/{a}" in hello_a["addrs"], hello_a
    for node in nodes:
        assert [e["round"] for e in node.rounds] == [1, 2, 3, 4], (node.index, node.events[-4:])
        assert sum(e["accepted"] == 2 for e in node.rounds) >= 3, (node.index, node.rounds)
        assert node.exit_code == 0
