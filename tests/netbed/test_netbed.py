"""Real nodes on separate hosts: Linux network namespaces joined by veth pairs and a bridge (tests/netbed/netns.py),
each node with its own 10.x address, nothing over loopback. Skipped, with the reason, where namespaces
cannot be made (not root, no iproute2, a kernel without them)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .netns import NetBed, remove_orphans, unavailable
from .nodes import PORT, node_argv, prepare, ring, run_nodes

WHY_NOT = unavailable()
pytestmark = [
    pytest.mark.network,
    pytest.mark.skipif(WHY_NOT is not None, reason=f"no network namespaces here: {WHY_NOT}"),
]


@pytest.fixture
def bed4() -> Iterator[NetBed]:
    bed = NetBed(4)
    bed.create()
    try:
        yield bed
    finally:
        bed.close()


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_bed_hosts_reach_each_other_only_through_the_bridge() -> None:
    with NetBed(2) as bed:
        assert set(bed.made) <= namespaces()
        probe = "import socket,sys; socket.create_connection((sys.argv[1], 9), timeout=5)"
        # a real TCP answer (a reset: nothing listens on port 9) from the other namespace's kernel
        done = subprocess.run(
            bed.command(0, ["python3", "-c", probe, bed.address(1)]), capture_output=True, text=True
        )
        assert "ConnectionRefusedError" in done.stderr
        # the bed's addresses do not exist outside it
        done = subprocess.run(["python3", "-c", probe, bed.address(1)], capture_output=True, text=True)
        assert "ConnectionRefusedError" not in done.stderr
        made = list(bed.made)
    assert not set(made) & namespaces()  # closed: every namespace gone


def test_orphans_of_dead_runs_are_removed_and_nothing_else() -> None:
    dead = 2**22 + 12345  # above the usual pid_max: no such process
    orphan = f"pxb{dead}xdeadbe-sw"
    subprocess.run(["ip", "netns", "add", orphan], check=True)
    try:
        with NetBed(1) as bed:
            mine = set(bed.made)
            assert orphan not in namespaces()
            assert remove_orphans() == [] and mine <= namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", orphan], capture_output=True)


@pytest.mark.slow
async def test_dpsgd_ring_across_four_hosts_with_a_rate_limited_link(bed4: NetBed, tmp_path: Path) -> None:
    """Four D-PSGD nodes, one per namespace, each listening on 0.0.0.0 (same port everywhere), announcing its
    own 10.x address; host 0's link is limited by tbf. Every node completes every round and learns."""
    bed4.limit(0, "8mbit")
    nodes = prepare(bed4, tmp_path)
    extra = [
        "--dataset",
        "blobs",
        "--model",
        "mlp",
        "--rounds",
        "4",
        "--round-timeout",
        "20",
        "--linger",
        "3",
    ]
    argvs = [node_argv(nodes, i, ring(4), tmp_path, extra) for i in range(4)]
    await run_nodes(bed4, nodes, argvs, tmp_path, timeout=150)
    for node in nodes:
        (hello,) = node.of("listening")
        # 0.0.0.0 is never announced: the node announces its namespace's one interface address
        assert hello["addrs"] == [node.address], hello
        assert hello["bound"] == [f"/ip4/0.0.0.0/tcp/{PORT}"]
        assert [e["round"] for e in node.rounds] == [1, 2, 3, 4], (node.index, node.events[-3:])
        assert all(e["accepted"] == 2 for e in node.rounds[1:]), node.rounds  # both neighbours every round
        assert node.rounds[-1]["accuracy"] > node.rounds[0]["accuracy"]
        assert node.exit_code == 0
    # host 0's limited link carried its models both ways: 4 rounds x 2 neighbours x the model's bytes
    shaped_out, shaped_in = bed4.shaped_bytes(0)
    model = 4 * nodes[0].of("listening")[0]["dim"]
    assert shaped_out > 4 * 2 * model and shaped_in > 4 * 2 * model, (shaped_out, shaped_in, model)
