"""Joining a running network with nothing but one bootstrap address (real ``phalanx node run`` processes).

D-PSGD with ``--degree 2``: a seed node and two joiners form a network from the seed's address alone; a node
that joins mid-run gets neighbours and mixes their models within 3 rounds; when half the nodes are SIGKILLed
the other half replace their dead neighbours from the members they know and keep completing rounds. EL-Local
samples its peers from the members it learned. Every membership record crossed the wire signed by its owner:
nobody penalised anybody (a forged or unsigned record would be a rejected message)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.node.nodeproc import NodeProcess

pytestmark = pytest.mark.network

BASE = ["--dataset", "blobs", "--model", "logreg", "--metrics-port", "-1", "--eval-every", "0"]
BASE += ["--round-timeout", "2", "--members-interval", "0.5", "--linger", "0"]


@contextlib.asynccontextmanager
async def processes() -> AsyncIterator[list[NodeProcess]]:
    procs: list[NodeProcess] = []
    try:
        yield procs
    finally:
        for p in procs:
            await p.aclose()


async def start(procs: list[NodeProcess], tmp: Path, name: str, *args: str) -> NodeProcess:
    proc = NodeProcess([*BASE, "--data-dir", str(tmp / name), *args], log_path=tmp / f"{name}.stderr")
    await proc.start()
    procs.append(proc)
    return proc


async def mixing_round(proc: NodeProcess, *, after: int = 0, timeout: float = 60) -> dict[str, Any]:
    """The next round line, past round ``after``, in which the node mixed at least one neighbour's model."""
    with trio.fail_after(timeout):
        while True:
            line = await proc.next_event("round", timeout=timeout)
            if line["round"] > after and line["received"] >= 1:
                return line


def penalised(proc: NodeProcess) -> list[dict[str, Any]]:
    return [e for e in proc.events if e.get("event") == "rejected" and e.get("reason") == "penalised"]


@pytest.mark.slow
async def test_dpsgd_network_from_one_address_late_joiner_and_half_killed(tmp_path: Path) -> None:
    async with processes() as procs:
        seed = await start(procs, tmp_path, "seed", "--degree", "2", "--alone", "wait")
        address = (await seed.next_event("waiting"))["addrs"][0]
        joiners = [
            await start(procs, tmp_path, f"j{i}", "--degree", "2", "--bootstrap", address) for i in (1, 2)
        ]
        for proc in (seed, *joiners):
            await mixing_round(proc, after=3)
        # a node joining mid-run: neighbours within 3 of its rounds
        late = await start(procs, tmp_path, "late", "--degree", "2", "--bootstrap", address)
        listening = await late.next_event("listening", timeout=60)
        assert listening["neighbours"], "a joiner starts with neighbours chosen from the members it learned"
        firsts = [await late.next_event("round", timeout=60) for _ in range(3)]
        assert any(line["received"] >= 1 for line in firsts), firsts
        # half the nodes die: the other half keep completing rounds with each other
        for proc in (seed, joiners[0]):
            proc.kill()
        survivors = (joiners[1], late)
        marks = []
        for proc in survivors:
            marks.append((await proc.next_event("round", timeout=30))["round"])
        for proc, mark in zip(survivors, marks, strict=True):
            line = await mixing_round(proc, after=mark + 5, timeout=90)
            assert line["received"] >= 1
        for proc in procs:
            assert not penalised(proc), penalised(proc)


@pytest.mark.slow
async def test_el_local_learns_members_from_one_address(tmp_path: Path) -> None:
    el = ["--protocol", "el-local", "--protocol-param", "s=2", "--rounds", "6"]
    async with processes() as procs:
        seed = await start(procs, tmp_path, "seed", *el, "--alone", "wait")
        address = (await seed.next_event("waiting"))["addrs"][0]
        joiners = [await start(procs, tmp_path, f"j{i}", *el, "--bootstrap", address) for i in (1, 2)]
        for proc in (seed, *joiners):
            await proc.next_event("finished", timeout=90)
        for proc in (seed, *joiners):
            rounds = [e for e in proc.events if e.get("event") == "round"]
            assert [e["round"] for e in rounds] == list(range(1, 7))
            assert sum(e["received"] for e in rounds) >= 3, rounds  # models from members it never was told of
            assert not penalised(proc)
        # the joiners knew only the seed's address; each learned the other through signed records
        members = [e for e in joiners[0].events if e.get("event") == "members"]
        assert members and members[0]["count"] >= 1


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
async def test_modest_joiner_with_one_address_is_sampled(tmp_path: Path) -> None:
    """Three MoDeST nodes started from fixed lists; a fourth knows only node 0's address: it learns the
    members' records and addresses through the exchange, joins MoDeST's view through its signed Join, and
    is sampled as a trainer (reports rounds) while the network keeps going."""
    from phalanx.node.identity import load_or_create_key, peer_id_of

    modest = ["--protocol", "modest", "--protocol-param", "s=2", "--rounds", "0"]
    addrs = []
    for i in range(3):
        (tmp_path / f"m{i}").mkdir()
        key = load_or_create_key(tmp_path / f"m{i}" / "node.key")
        addrs.append(f"/ip4/127.0.0.1/tcp/{_free_port()}/p2p/{peer_id_of(key)}")
    async with processes() as procs:
        nodes = []
        for i in range(3):
            others = [a for j, a in enumerate(addrs) if j != i]
            listen = addrs[i].split("/p2p/")[0]
            args = [*modest, "--listen", listen, *(f for a in others for f in ("--neighbour", a))]
            nodes.append(await start(procs, tmp_path, f"m{i}", *args))
        await nodes[0].next_event("round", timeout=60, round=5)
        joiner = await start(procs, tmp_path, "joiner", *modest, "--bootstrap", addrs[0])
        first = await joiner.next_event("round", timeout=60)
        assert first["round"] >= 5  # it joined the running network's round, not round 0
        await nodes[1].next_event("round", timeout=30, round=first["round"] + 3)
        for proc in procs:
            assert not penalised(proc), penalised(proc)


@pytest.mark.slow
async def test_a_joiner_started_before_its_bootstrap_node_does_not_wait_out_libp2ps_dial_backoff(
    tmp_path: Path,
) -> None:
    """py-libp2p refuses to dial a peer for 60 s once every address of it failed; the membership exchange
    forgets the failed dials of its bootstrap peers, so a joiner started first gets in as soon as the
    bootstrap node listens (well inside those 60 s)."""
    from phalanx.node.identity import load_or_create_key, peer_id_of

    (tmp_path / "seed").mkdir()
    peer = peer_id_of(load_or_create_key(tmp_path / "seed" / "node.key"))
    address = f"/ip4/127.0.0.1/tcp/{_free_port()}/p2p/{peer}"
    async with processes() as procs:
        joiner = await start(procs, tmp_path, "joiner", "--degree", "1", "--bootstrap", address)
        await joiner.next_event("waiting", timeout=60)
        # its second "still waiting" line (5 s later): the dials of the bootstrap node, retried every second,
        # have failed meanwhile (nothing listens there yet), so py-libp2p's dial backoff is in force
        await joiner.next_event("waiting", timeout=60)
        listen = address.split("/p2p/")[0]
        await start(procs, tmp_path, "seed", "--degree", "1", "--alone", "wait", "--listen", listen)
        members = await joiner.next_event("members", timeout=40)
        assert members["count"] == 1
        await mixing_round(joiner, timeout=30)
