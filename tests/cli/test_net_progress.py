"""``phalanx net up`` tells what it is doing: progress for every node (min / median / max round), logs that can
be followed while the run goes, a cap on the process count by memory, and a message naming a node that stalls."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from phalanx.cli import main
from phalanx.node.netup import NodeRecord, check_memory, progress_of


def cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def record(index: int, last_round: int, **state: object) -> NodeRecord:
    r = NodeRecord(index=index, peer_id=f"p{index}", address="")
    r.rounds = [{"round": k} for k in range(1, last_round + 1)]
    for key, value in state.items():
        setattr(r, key, value)
    return r


def test_progress_is_min_median_max_over_nodes_not_killed() -> None:
    records = [
        record(0, 2),
        record(1, 5, finished=True),
        record(2, 3),
        record(3, 1, killed_at=1),
        record(4, 4, exit_code=1),
    ]
    p = progress_of(records, rounds=5, elapsed=12.3)
    assert (p.low, p.median, p.high) == (2, 3.5, 5)
    assert (p.running, p.finished, p.killed, p.failed) == (2, 1, 1, 1)
    assert p.line() == (
        "net up: round min 2 / median 3.5 / max 5 of 5; 2 running, 1 finished, 1 killed, 1 failed; 12 s"
    )


def test_memory_cap_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    check_memory(4, 1 << 30, available=8 << 30)
    with pytest.raises(ValueError, match=r"5 node processes need about 5.0 GiB .* at most 3 fit"):
        check_memory(5, 1 << 30, available=4 << 30)
    # through the command line: no process started, no run folder written
    argv = [
        "net",
        "up",
        "--nodes",
        "1000",
        "--dataset",
        "blobs",
        "--node-memory",
        "100000",
        "--out",
        str(tmp_path / "run"),
    ]
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("phalanx net up: error: 1000 node processes need about") and "\n" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.network
def test_a_stalled_node_is_named_and_ends_the_run(tmp_path: Path) -> None:
    """A silent attacker never sends; with a round timeout far beyond the stall timeout its neighbours
    complete no round, and net up stops with a line naming the node instead of waiting for its timeout."""
    out = tmp_path / "run"
    argv = [
        *("net", "up", "--nodes", "4", "--rounds", "3", "--dataset", "blobs", "--model", "logreg"),
        *("--byzantine", "1:silent", "--round-timeout", "300", "--stall-timeout", "4"),
        *("--timeout", "120", "--no-plots", "--out", str(out)),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "phalanx", *argv],
        capture_output=True,
        text=True,
        timeout=150,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("phalanx net up: error: ")]
    assert errors and all("stalled at round 0" in e for e in errors), done.stderr
    assert any(e.split("error: node ")[1].split()[0] in ("0", "2") for e in errors)  # a neighbour of node 1
    assert "logs in" in errors[0] and "timed out" not in done.stderr
    assert "net up: round min 0 / median" in done.stderr  # progress lines while it ran
    assert "stalled" in done.stdout  # the table says which
    # the logs were written line by line as the run went: every node's log ends with a whole line
    for i in range(4):
        text = (out / "nodes" / f"node-{i}" / "log.jsonl").read_text()
        assert text.endswith("\n") and '"event":"listening"' in text
