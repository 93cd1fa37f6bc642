"""``phalanx net up --protocol bristle`` on real node processes: every node evaluates its candidates on its own
samples through the runtime (``Evaluate``), integrates, finishes; an attacker's poisoned class is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.network, pytest.mark.slow]

ROUNDS = 3


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_net_up_bristle_integrates_per_class_on_real_nodes(tmp_path: Path) -> None:
    # --train-only head: the vector is the MLP's output layer (on its seeded random frozen part), so
    # merge=auto merges it class by class
    done = subprocess.run(
        [
            sys.executable, "-m", "phalanx", "net", "up", "--nodes", "4", "--topology", "complete",
            "--rounds", str(ROUNDS), "--dataset", "mnist", "--model", "mlp", "--train-only", "head", "--local-steps", "10", "--no-plots",
            "--timeout", "55", "--out", str(tmp_path), "--protocol", "bristle",
            "--protocol-param", "eval_samples=50",
            "--byzantine", "3:class-poison", "--attack-param", "scale=30",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    rows = lines(tmp_path / "metrics.jsonl")
    assert [r["round"] for r in rows] == list(range(ROUNDS))
    nodes = json.loads((tmp_path / "nodes.json").read_text())
    # every node did every round; none failed (an exit code still None is a process net up had not reaped
    # when it wrote nodes.json, seen under load; its log says it finished)
    assert all(n["rounds"] == ROUNDS and n["exit_code"] in (0, None) for n in nodes), [
        (n["index"], n["rounds"], n["exit_code"]) for n in nodes
    ]
    for i in range(3):  # the honest nodes
        (stopped,) = [
            e for e in lines(tmp_path / "nodes" / f"node-{i}" / "log.jsonl") if e["event"] == "stopped"
        ]
        counters = stopped["protocol"]
        # each round: its own model and its three neighbours' models evaluated on its 50 samples
        assert counters["evaluations"] == 4 * ROUNDS and counters["stale_evaluations"] == 0
        assert counters["not_a_head"] == 0
        assert counters["classes_accepted"] > 0 and counters["classes_rejected"] > 0
        assert counters["peers_accepted"] <= 2 * ROUNDS  # the attacker's class rows are never taken whole
