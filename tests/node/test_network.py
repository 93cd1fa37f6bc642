"""Real node processes on 127.0.0.1: a ring learns, survives a kill, filters ALIE; a node survives bad peers;
a SIGKILLed node resumes from its checkpoint with the same peer id."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import torch
import trio

from phalanx.gossip.messages import ModelUpdate, encode
from phalanx.gossip.wire import FRAME_HEADER, Limits, frame, pack
from phalanx.node import checkpoint as ckpt
from phalanx.node.identity import load_or_create_key, peer_id_of
from phalanx.node.metrics import fetch
from phalanx.node.netup import NetSpec, _lines, run_network
from phalanx.node.transport import Libp2pTransport, TransportError, open_libp2p_transport

from .nodeproc import NodeProcess

pytestmark = pytest.mark.network

BLOBS_LOGREG_DIM = 32 * 10 + 10
FAST = ["--dataset", "blobs", "--model", "logreg", "--lr", "0.05"]


def ring(n: int) -> list[tuple[int, int]]:
    return [(i, (i + 1) % n) for i in range(n)]


@pytest.mark.slow
async def test_ring_of_four_learns_and_survives_a_kill(tmp_path: Path) -> None:
    spec = NetSpec(
        n=4,
        edges=ring(4),
        rounds=8,
        workdir=tmp_path,
        kills={3: 3},
        timeout=90,
        node_args=[*FAST, "--round-timeout", "5"],
    )
    result = await run_network(spec)
    assert not result.timed_out
    survivors = [n for n in result.nodes if n.index != 3]
    assert result.nodes[3].killed_at == 3
    for node in survivors:
        assert node.finished and node.last["round"] == 8
        accs = [e["accuracy"] for e in node.rounds]
        assert accs[-1] > accs[0] and accs[-1] >= 0.9
        assert node.exit_code == 0


def _has_attack(name: str) -> bool:
    from phalanx.gossip.byzantine import attack_names

    return name in attack_names()


@pytest.mark.slow
@pytest.mark.skipif(not _has_attack("alie"), reason="aggregation/ has no ALIE attack yet")
async def test_alie_attacker_is_filtered_by_a_robust_rule(tmp_path: Path) -> None:
    spec = NetSpec(
        n=5,
        edges=ring(5),
        rounds=8,
        workdir=tmp_path,
        byzantine={2: "alie"},
        timeout=90,
        node_args=[*FAST, "--round-timeout", "5", "--rule", "median", "--attack-delay", "0.3"],
    )
    result = await run_network(spec)
    assert not result.timed_out
    honest = [n for n in result.nodes if n.index != 2]
    for node in honest:
        assert node.finished and node.last["accuracy"] >= 0.9, (node.index, node.last)


# ---------------------------------------------------------------- one node and a misbehaving test peer


@pytest.fixture
async def node_and_client(tmp_path: Path) -> AsyncIterator[tuple[NodeProcess, Libp2pTransport, str, int]]:
    """A node whose one neighbour is this test's libp2p client; the node completes rounds on timeouts."""
    from libp2p.crypto.ed25519 import create_new_key_pair

    client_key = create_new_key_pair()
    limits = Limits(dim=BLOBS_LOGREG_DIM)
    async with open_libp2p_transport(client_key, limits=limits) as client:
        proc = NodeProcess(
            [
                *FAST,
                "--data-dir",
                str(tmp_path / "node"),
                "--neighbour",
                client.listen_addresses()[0],
                "--round-timeout",
                "0.3",
                "--ban-threshold",
                "4",
                "--eval-every",
                "0",
            ],
            log_path=tmp_path / "node.stderr",
        )
        try:
            await proc.start()
            hello = await proc.next_event("listening")
            name = client.add_address(hello["addrs"][0])
            yield proc, client, name, hello["metrics_port"]
        finally:
            await proc.aclose()


async def _status(port: int) -> dict:
    return json.loads(await fetch(port, "/status"))


async def _wait_rejected(proc: NodeProcess, port: int, reason: str) -> dict:
    """Wait for the node's log line of the rejection (no polling), then read its status."""
    await proc.next_event("rejected", reason=reason, timeout=15)
    status = await _status(port)
    assert status["rejected"].get(reason, 0) >= 1
    return status


async def test_bad_bytes_are_counted_and_the_node_keeps_going(
    node_and_client: tuple[NodeProcess, Libp2pTransport, str, int],
) -> None:
    proc, client, name, port = node_and_client
    await proc.next_event("round", round=1)
    # 1. raw garbage straight to the TCP port: the libp2p handshake fails, the node shrugs
    addr = proc.events[0]["addrs"][0].split("/")
    with socket.create_connection((addr[2], int(addr[4])), timeout=5) as sock:
        sock.sendall(b"\x00\xffGET / HTTP/1.1\r\n\r\n" + bytes(range(256)) * 8)
    # 2. over a proper libp2p stream on the phalanx protocol: garbage body, wrong length, oversized frame
    good = torch.ones(BLOBS_LOGREG_DIM)
    await client.send_raw(name, frame(b"\xc1garbage"))
    await _wait_rejected(proc, port, "malformed")
    await client.send_raw(name, frame(pack("model", {"r": 10**6, "s": 0, "p": b"\0" * 12})))
    await _wait_rejected(proc, port, "wrong-dimension")
    nan = np.ones(BLOBS_LOGREG_DIM, dtype="<f4")
    nan[3] = np.nan
    await client.send_raw(name, frame(pack("model", {"r": 10**6, "s": 0, "p": nan.tobytes()})))
    await _wait_rejected(proc, port, "non-finite")
    before = (await _status(port))["round"]
    # 3. a valid model message is accepted
    await client.send(name, encode(ModelUpdate(round=before + 5, params=good)))
    # the fourth invalid message bans the client: even a valid message is refused now...
    await client.send_raw(name, FRAME_HEADER.pack(2**31))
    status = await _wait_rejected(proc, port, "frame-too-large")
    assert status["banned"] == 1
    await proc.next_event("banned", peer=client.peer_id)
    await proc.next_event("round", round=before + 2)  # ... and the node still completes rounds
    assert (await _status(port))["messages_in"] >= 1  # the valid message, sent before the ban, was taken
    text = (await fetch(port, "/metrics")).decode()
    assert 'phalanx_messages_rejected_total{reason="malformed"} 1' in text


async def test_ban_survives_reconnecting(tmp_path: Path) -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair

    limits = Limits(dim=BLOBS_LOGREG_DIM)
    bad_key = create_new_key_pair()
    proc = NodeProcess(
        [
            *FAST,
            "--data-dir",
            str(tmp_path / "node"),
            "--round-timeout",
            "0.5",
            "--ban-threshold",
            "2",
            "--eval-every",
            "0",
            "--rounds",
            "0",
            "--alone",
            "train",
        ],
        log_path=tmp_path / "stderr",
    )
    try:
        await proc.start()
        hello = await proc.next_event("listening")
        port = hello["metrics_port"]
        async with open_libp2p_transport(bad_key, limits=limits) as bad:
            name = bad.add_address(hello["addrs"][0])
            for _ in range(2):
                await bad.send_raw(name, frame(b"\xc1"))
            await proc.next_event("banned", peer=bad.peer_id)
        # a new host with the same key: a new connection, the same peer id, still banned
        async with open_libp2p_transport(bad_key, limits=limits) as again:
            name = again.add_address(hello["addrs"][0])
            # the node may reset the stream before the write completes
            with contextlib.suppress(TransportError):
                await again.send(name, encode(ModelUpdate(round=1, params=torch.ones(BLOBS_LOGREG_DIM))))
            await _wait_rejected(proc, port, "banned")
        assert (await _status(port))["messages_in"] == 0
    finally:
        await proc.aclose()


@pytest.mark.slow
async def test_sigkilled_node_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    data = tmp_path / "node"
    # a neighbour that never answers: rounds advance on the round timeout
    ghost = f"/ip4/127.0.0.1/tcp/9/p2p/{peer_id_of(load_or_create_key(tmp_path / 'ghost.key'))}"
    args = [
        *FAST,
        "--data-dir",
        str(data),
        "--neighbour",
        ghost,
        "--round-timeout",
        "0.2",
        "--eval-every",
        "0",
    ]
    first = NodeProcess(args, log_path=tmp_path / "first.stderr")
    try:
        await first.start()
        hello = await first.next_event("listening")
        assert hello["start_round"] == 0
        await first.next_event("round", round=4)
        first.kill()
        await first.wait()
    finally:
        await first.aclose()
    saved = ckpt.load(data / ckpt.FILENAME, dim=BLOBS_LOGREG_DIM)
    assert saved is not None and saved.round >= 4 and saved.peer_id == hello["peer_id"]
    second = NodeProcess(args, log_path=tmp_path / "second.stderr")
    try:
        await second.start()
        again = await second.next_event("listening")
        assert again["peer_id"] == hello["peer_id"]
        assert again["start_round"] == saved.round
        resumed = await second.next_event("round")
        assert resumed["round"] == saved.round + 1
    finally:
        await second.aclose()


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig", [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]
)
async def test_net_up_interrupted_leaves_no_children(tmp_path: Path, sig: signal.Signals) -> None:
    proc = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "phalanx",
            "net",
            "up",
            "--nodes",
            "3",
            "--rounds",
            "100000",
            "--dataset",
            "blobs",
            "--out",
            str(tmp_path),
            "--no-plots",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a background shell ignores SIGINT
    )
    try:
        assert proc.stdout is not None
        lines = _lines(proc.stdout)
        with trio.fail_after(60):
            async for line in lines:
                if re.search(rb"net up: round min [2-9]", line):  # every node has done round 2
                    break
        children = _children(proc.pid)
        assert len(children) == 3
        proc.send_signal(sig)
        output = b""
        with trio.fail_after(30):
            async for line in lines:
                output += line + b"\n"
            code = await proc.wait()
        assert code == 130 and b"phalanx net up: interrupted" in output
        assert b"Traceback" not in output
        assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


@pytest.mark.slow
async def test_a_ring_learns_through_topk_with_privacy_accounted(tmp_path: Path) -> None:
    """Issue 18 end to end: real processes with --compress and --dp-*; every round line carries epsilon,
    nothing is rejected, and the nodes send far fewer bytes than float32 would (4 * 330 per message)."""
    spec = NetSpec(
        n=3,
        edges=ring(3),
        rounds=4,
        workdir=tmp_path,
        timeout=90,
        node_args=[
            *FAST,
            "--round-timeout",
            "5",
            "--compress",
            "topk:0.1",
            "--dp-clip",
            "1",
            "--dp-sigma",
            "0.5",
        ],
    )
    result = await run_network(spec)
    assert not result.timed_out
    for node in result.nodes:
        assert node.finished and node.last["round"] == 4 and node.exit_code == 0
        eps = [e["dp_epsilon"] for e in node.rounds]
        assert all(a < b for a, b in itertools.pairwise(eps)), eps
        assert node.last["rejected"] == 0
        # 8 messages: 2 keyframes (first to each neighbour) and 6 top-k differences
        assert node.last["bytes_out"] < 8 * 4 * BLOBS_LOGREG_DIM * 0.5
