"""No silent degraded modes in ``phalanx node run``: a node with no neighbours says so (exits, waits or trains
alone by ``--alone``), a re-run says it resumed and from which round (``--fresh`` starts over), and a neighbour
that cannot be reached is logged with its address and the reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from phalanx.cli import main

NODE = ["node", "run", "--dataset", "blobs", "--model", "logreg", "--metrics-port", "-1", "--linger", "0"]


def cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def events(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_no_neighbours_exits_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli([*NODE, "--data-dir", str(tmp_path), "--rounds", "1"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("phalanx node run: error: no neighbours:") and len(err.splitlines()) == 1
    assert "--alone wait" in err and "--alone train" in err
    assert not (tmp_path / "checkpoint.bin").exists()  # it did not train alone


def test_bad_alone_and_wildcard_announce(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli([*NODE, "--data-dir", str(tmp_path), "--alone", "maybe"]) == 2
    assert "argument --alone: invalid choice" in capsys.readouterr().err
    assert (
        cli([*NODE, "--data-dir", str(tmp_path), "--alone", "train", "--announce", "/ip4/0.0.0.0/tcp/1"]) == 2
    )
    err = capsys.readouterr().err
    assert "is a wildcard" in err and len(err.strip().splitlines()) == 1


def test_rerun_says_it_resumed_and_fresh_starts_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*NODE, "--data-dir", str(tmp_path), "--rounds", "2", "--alone", "train", "--round-timeout", "0.1"]
    assert cli(argv) == 0
    first = events(capsys.readouterr().out)
    assert [e["round"] for e in first if e["event"] == "round"] == [1, 2]
    assert "resumed" not in {e["event"] for e in first}
    assert any(e["event"] == "alone" for e in first)  # training alone is said, not silent

    assert cli(argv) == 0
    second = events(capsys.readouterr().out)
    (resumed,) = [e for e in second if e["event"] == "resumed"]
    assert resumed["round"] == 2 and resumed["finished"] is True
    assert "--fresh" in resumed["message"] and "all 2 rounds are done" in resumed["message"]
    assert not [e for e in second if e["event"] == "round"]

    assert cli([*argv, "--fresh"]) == 0
    third = events(capsys.readouterr().out)
    (fresh,) = [e for e in third if e["event"] == "fresh"]
    assert Path(fresh["to"]).exists() and fresh["to"].endswith(".old")
    assert "resumed" not in {e["event"] for e in third}
    assert [e["round"] for e in third if e["event"] == "round"] == [1, 2]
    peer_ids = {e["peer_id"] for e in first + second + third if e["event"] == "listening"}
    assert len(peer_ids) == 1  # --fresh keeps the key


@pytest.mark.network
def test_unreachable_neighbour_is_logged_with_address_and_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair

    from phalanx.node.identity import peer_id_of

    ghost = peer_id_of(create_new_key_pair())
    address = f"/ip4/127.0.0.1/tcp/1/p2p/{ghost}"
    argv = [
        *NODE,
        "--data-dir",
        str(tmp_path),
        "--rounds",
        "1",
        "--round-timeout",
        "3",
        "--neighbour",
        address,
    ]
    assert cli(argv) == 0
    out = events(capsys.readouterr().out)
    unreachable = [e for e in out if e["event"] == "unreachable"]
    assert unreachable, out
    assert unreachable[0]["peer"] == ghost and unreachable[0]["address"] == address
    assert unreachable[0]["reason"].startswith("connection refused")
    assert not any("SwarmException" in json.dumps(e) for e in unreachable)


@pytest.mark.network
async def test_alone_wait_takes_the_first_peer_that_connects(tmp_path: Path) -> None:
    import trio
    from libp2p.crypto.ed25519 import create_new_key_pair

    from phalanx.gossip.wire import Limits
    from phalanx.node.transport import open_libp2p_transport
    from tests.node.nodeproc import NodeProcess

    proc = NodeProcess(
        [
            *NODE[2:],
            "--data-dir",
            str(tmp_path),
            "--alone",
            "wait",
            "--rounds",
            "1",
            "--round-timeout",
            "0.5",
        ],
        log_path=tmp_path / "stderr",
    )
    try:
        await proc.start()
        waiting = await proc.next_event("waiting")
        assert "no neighbours yet" in waiting["message"]
        async with open_libp2p_transport(create_new_key_pair(), limits=Limits(dim=330)) as client:
            peer = client.add_address(waiting["addrs"][0])
            await client.connect(peer)
            hello = await proc.next_event("listening")
            assert hello["neighbours"] == [client.peer_id]
            await proc.next_event("round", round=1)
            with trio.fail_after(30):
                assert await proc.wait() == 0
    finally:
        await proc.aclose()


@pytest.mark.network
@pytest.mark.slow
async def test_a_neighbour_that_starts_late_is_reached_within_seconds(tmp_path: Path) -> None:
    """A's neighbour B is not up: A logs it unreachable (connection refused). B starts later, with no
    neighbours of its own (``--alone wait``): A's watcher reaches it in seconds, although py-libp2p would
    refuse to redial B for 60 s after the failed dial, and B takes A, who connected, as its neighbour."""
    import trio

    from phalanx.node.identity import load_or_create_key, peer_id_of
    from phalanx.node.netup import free_ports
    from tests.node.nodeproc import NodeProcess

    (port,) = free_ports(1)
    b_id = peer_id_of(load_or_create_key(tmp_path / "b" / "node.key"))
    b_addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{b_id}"
    common = [*NODE[2:], "--rounds", "2", "--round-timeout", "5", "--linger", "2"]
    a = NodeProcess(
        [*common, "--data-dir", str(tmp_path / "a"), "--neighbour", b_addr], log_path=tmp_path / "a.err"
    )
    b = NodeProcess(
        [
            *common,
            "--data-dir",
            str(tmp_path / "b"),
            "--listen",
            f"/ip4/127.0.0.1/tcp/{port}",
            "--alone",
            "wait",
        ],
        log_path=tmp_path / "b.err",
    )
    try:
        await a.start()
        down = await a.next_event("unreachable", peer=b_id)
        assert down["address"] == b_addr and down["reason"].startswith("connection refused")
        await b.start()
        started = trio.current_time()
        await a.next_event("reachable", peer=b_id, timeout=30)
        assert trio.current_time() - started < 30  # not the 60 s of py-libp2p's negative cache
        hello = await b.next_event("listening")
        assert hello["neighbours"] == [next(e["peer_id"] for e in a.events if e["event"] == "listening")]
        for proc in (a, b):  # "stopped" comes last: every round line is in proc.events by then
            await proc.next_event("stopped")
            assert [e["round"] for e in proc.events if e["event"] == "round"][-1] == 2
    finally:
        await a.aclose()
        await b.aclose()
