"""``phalanx pretrain`` and ``--train-only head``: a weights file, a head-only simulation that sends less,
and one-line errors with exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib

import pytest

from phalanx.cli import main
from phalanx.node.transfer import read_weights
from phalanx.sim.config import from_mapping

SIM = ["--dataset", "blobs", "--nodes", "6", "--rounds", "4", "--topology", "ring", "--no-progress"]
SIM += ["--no-plots"]


def status(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    path = tmp_path_factory.mktemp("pretrain") / "blobs-mlp.phxw"
    args = ["pretrain", "--dataset", "blobs", "--model", "mlp", "--source", "holdout:0.2", "--epochs", "3"]
    assert main([*args, "--out", str(path)]) == 0
    return path


def test_pretrain_writes_the_frozen_part_and_its_provenance(features, capsys):
    weights = read_weights(features)
    assert set(weights.tensors) == {"1.weight", "1.bias"}  # the mlp without its head "3"
    p = weights.provenance
    assert p["dataset"] == "blobs" and p["model"] == "mlp" and p["source"] == "holdout:0.2"
    assert p["source_samples"] == 400 and p["seed"] == 0 and p["test_accuracy"] > 0.5


def test_head_only_sim_sends_less_and_records_the_features(features, tmp_path, capsys):
    head, full = tmp_path / "head", tmp_path / "full"
    argv = ["sim", *SIM, "--train-only", "head", "--features", str(features), "--out", str(head)]
    assert main(argv) == 0
    assert main(["sim", *SIM, "--out", str(full)]) == 0
    s_head = json.loads((head / "summary.json").read_text())
    s_full = json.loads((full / "summary.json").read_text())
    # the mlp 32-64-10 has 2,762 parameters, its head 650: bytes shrink by the same ratio (plus framing)
    assert s_head["bytes"] < s_full["bytes"] * 650 / 2762 * 1.2
    assert s_head["messages"] == s_full["messages"]
    assert s_head["features_sha256"] == read_weights(features).sha256
    assert s_head["excluded_samples"] == 400 and s_head["head_params"] == 650
    assert s_head["acc_mean"] > 0.5
    config = from_mapping(tomllib.loads((head / "config.toml").read_text()))
    assert config.train_only == "head" and config.features == str(features)


def test_head_only_without_features_trains_on_random_features(tmp_path, capsys):
    out = tmp_path / "random"
    assert main(["sim", *SIM, "--train-only", "head", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["features"] == "random" and summary["excluded_samples"] == 0


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["pretrain", "--source", "holdout:2"], "holdout needs a fraction"),
        (["pretrain", "--source", "everything"], "unknown pretraining source"),
        (["pretrain", "--model", "nope"], "unknown model"),
        (["sim", *SIM, "--features", "X"], "add --train-only head"),
        (["sim", *SIM, "--train-only", "some"], "train_only"),
        (["sim", *SIM, "--train-only", "head", "--features", "/nonexistent.phxw"], "nonexistent.phxw"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, needle, tmp_path, capsys):
    if argv[0] == "pretrain":
        argv = [*argv, "--dataset", "blobs", "--out", str(tmp_path / "w.phxw")]
    assert status(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_a_corrupt_or_foreign_features_file_is_refused(features, tmp_path, capsys):
    bad = tmp_path / "bad.phxw"
    bad.write_bytes(features.read_bytes()[:-5])
    assert status(["sim", *SIM, "--train-only", "head", "--features", str(bad)]) == 2
    assert "checksum" in capsys.readouterr().err
    argv = ["sim", *SIM, "--model", "logreg", "--train-only", "head", "--features", str(features)]
    assert status(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "made for model mlp" in err and len(err.splitlines()) == 1


def test_pretrain_refuses_to_overwrite(features, capsys):
    assert status(["pretrain", "--dataset", "blobs", "--out", str(features)]) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.network
def test_net_up_nodes_log_the_same_features_hash(features, tmp_path):
    """Real node processes load the file: each logs its sha256, and net up checks they all match."""
    out = tmp_path / "net"
    argv = [
        *("net", "up", "--nodes", "3", "--rounds", "2", "--dataset", "blobs", "--topology", "ring"),
        *("--train-only", "head", "--features", str(features), "--round-timeout", "5"),
        *("--timeout", "120", "--no-plots", "--out", str(out)),
    ]
    done = subprocess.run(
        [sys.executable, "-m", "phalanx", *argv],
        capture_output=True,
        text=True,
        timeout=150,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert done.returncode == 0, done.stderr
    digest = read_weights(features).sha256
    assert f"sha256 {digest}" in done.stdout
    for i in range(3):
        events = [
            json.loads(line) for line in (out / "nodes" / f"node-{i}" / "log.jsonl").read_text().splitlines()
        ]
        (loaded,) = [e for e in events if e["event"] == "features"]
        assert loaded["features_sha256"] == digest and loaded["head_params"] == 650
        assert loaded["excluded_samples"] == 400
        (listening,) = [e for e in events if e["event"] == "listening"]
        assert listening["dim"] == 650 and listening["features_sha256"] == digest


@pytest.mark.slow
@pytest.mark.network
async def test_net_up_stops_when_a_node_loaded_other_features(features, tmp_path):
    from phalanx.node.netup import NetSpec, run_network

    spec = NetSpec(
        n=2,
        edges=[(0, 1)],
        rounds=2,
        workdir=tmp_path,
        timeout=60,
        node_args=["--dataset", "blobs", "--train-only", "head", "--features", str(features)],
        features_sha256="0" * 64,  # what net up expected: not what the nodes load
    )
    result = await run_network(spec)
    assert result.problems and all("loaded frozen features" in p for p in result.problems)
