"""``phalanx net up`` with the sampling protocols on real node processes: MoDeST (only a round's sample
reports it) and Epidemic Learning complete, exit 0 and write a metrics row for every round; MoDeST's signed
membership records verify between processes; a killed MoDeST node does not stop the run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.network, pytest.mark.slow]

ROUNDS = 3
BASE = [
    "net", "up", "--nodes", "4", "--topology", "complete", "--rounds", str(ROUNDS),
    "--dataset", "blobs", "--model", "logreg", "--no-plots", "--timeout", "35",
]  # fmt: skip


def net_up(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "phalanx", *BASE, "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=40,
    )


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def logs(out: Path, i: int) -> list[dict[str, Any]]:
    return lines(out / "nodes" / f"node-{i}" / "log.jsonl")


def check_rows(out: Path, live: int) -> list[dict[str, Any]]:
    rows = lines(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == list(range(ROUNDS))
    for row in rows:  # every round was reported (by its sample, for MoDeST) and evaluated
        assert row["acc_mean"] is not None and row["live"] >= live, row
    return rows


def test_net_up_modest_completes_with_signed_membership(tmp_path: Path) -> None:
    # inactivity=10: a node re-signs its activity claim every inactivity // 10 = 1 rounds, so signed records
    # travel with every model in a 3-round run (with the default they are re-signed every 100 rounds)
    params = ["--protocol-param", "s=2", "--protocol-param", "inactivity=10"]
    done = net_up(tmp_path, "--protocol", "modest", *params)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "net up: network round 3 of 3" in done.stderr  # progress is the network's, not each node's
    check_rows(tmp_path, live=4)
    nodes = json.loads((tmp_path / "nodes.json").read_text())
    # the final round reached round 3's two trainers; nobody stalled or failed
    assert sum(n["rounds"] == ROUNDS for n in nodes) >= 2
    assert all(n["exit_code"] == 0 and n["rejected"] == 0 for n in nodes), nodes
    table = (tmp_path / "table.txt").read_text()
    assert all(
        state in ("finished", "stopped") for state in (row.split()[-1] for row in table.splitlines()[2:])
    )
    # every node reports only the rounds it is sampled in: the round numbers it logs may skip, never repeat
    for i in range(4):
        reported = [e["round"] for e in logs(tmp_path, i) if e["event"] == "round"]
        assert reported == sorted(set(reported))
    # signed membership between processes: records signed by one node verified by another, none refused
    stopped = [e for i in range(4) for e in logs(tmp_path, i) if e["event"] == "stopped"]
    assert stopped and all(e["protocol"]["rejected_record"] == 0 for e in stopped)
    assert sum(e["protocol"]["signatures_checked"] for e in stopped) > 0


def test_net_up_epidemic_learning_completes(tmp_path: Path) -> None:
    # EL-Local cannot know how many models a round brings: each round ends at the round timeout
    done = net_up(tmp_path, "--protocol", "el-local", "--protocol-param", "s=2", "--round-timeout", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    check_rows(tmp_path, live=4)
    nodes = json.loads((tmp_path / "nodes.json").read_text())
    assert all(n["rounds"] == ROUNDS and n["exit_code"] == 0 for n in nodes), nodes


def test_net_up_modest_survives_a_killed_node(tmp_path: Path) -> None:
    done = net_up(tmp_path, "--protocol", "modest", "--protocol-param", "s=2", "--kill", "3@1")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = check_rows(tmp_path, live=3)
    nodes = json.loads((tmp_path / "nodes.json").read_text())
    assert nodes[3]["killed_at"] is not None and nodes[3]["killed_at"] >= 1
    assert rows[-1]["live"] == 3  # the killed node is not alive in the last round
    assert sum(n["rounds"] == ROUNDS for n in nodes[:3]) >= 1
