"""State files under attack: a node whose newest checkpoint was damaged while it was down comes back from
the previous generation and says so in its first log line; one whose every generation is damaged refuses
to start with one line and exit status 2 (no traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from phalanx.node import checkpoint as ckpt
from phalanx.node.identity import load_or_create_key, peer_id_of

from ..node.nodeproc import NodeProcess
from .harness import NODE_ARGS

pytestmark = pytest.mark.network


def _args(tmp_path: Path) -> list[str]:
    ghost = f"/ip4/127.0.0.1/tcp/9/p2p/{peer_id_of(load_or_create_key(tmp_path / 'ghost.key'))}"
    return [
        *NODE_ARGS,
        "--data-dir",
        str(tmp_path / "node"),
        "--neighbour",
        ghost,
        "--round-timeout",
        "0.1",
        "--metrics-port",
        "-1",
    ]


async def _run_until(args: list[str], log: Path, rounds: int) -> None:
    node = NodeProcess(args, log_path=log)
    try:
        await node.start()
        await node.next_event("round", round=rounds)
    finally:
        await node.aclose()


async def test_a_damaged_newest_checkpoint_falls_back_and_says_so(tmp_path: Path) -> None:
    args = _args(tmp_path)
    await _run_until(args, tmp_path / "first.stderr", 4)
    newest = tmp_path / "node" / ckpt.FILENAME
    previous = ckpt.load(ckpt.previous_path(newest))
    assert previous is not None
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a torn write or a bad sector
    newest.write_bytes(bytes(data))
    node = NodeProcess(args, log_path=tmp_path / "second.stderr")
    try:
        await node.start()
        fallback = await node.next_event("checkpoint-fallback")
        assert fallback["path"].endswith("checkpoint.prev.bin") and "CRC" in fallback["skipped"]
        hello = await node.next_event("listening")
        assert hello["start_round"] == previous.round
        await node.next_event("round", round=previous.round + 1)
    finally:
        await node.aclose()


async def test_no_usable_generation_refuses_to_start_with_one_line(tmp_path: Path) -> None:
    args = _args(tmp_path)
    await _run_until(args, tmp_path / "first.stderr", 3)
    newest = tmp_path / "node" / ckpt.FILENAME
    for path in (newest, ckpt.previous_path(newest)):
        path.write_bytes(path.read_bytes()[:-1])
    node = NodeProcess(args, log_path=tmp_path / "second.stderr")
    try:
        await node.start()
        with trio.fail_after(60):
            assert await node.wait() == 2
    finally:
        await node.aclose()
    lines = (tmp_path / "second.stderr").read_text().strip().splitlines()
    assert len(lines) == 1 and "previous generation" in lines[0], lines
