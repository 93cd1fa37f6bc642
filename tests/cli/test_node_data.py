"""``phalanx node run --data PATH``: a node trains on its own local dataset, with no --nodes/--index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from phalanx.cli import main

NODE = ["node", "run", "--model", "logreg", "--metrics-port", "-1", "--linger", "0", "--alone", "train"]


def cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def test_own_npz_file_is_all_this_nodes_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    argv = [*NODE, "--data", str(tmp_path / "mine.npz"), "--data-dir", str(tmp_path / "n"), "--rounds", "2"]
    assert cli([*argv, "--round-timeout", "0.1"]) == 0
    lines = [json.loads(s) for s in capsys.readouterr().out.splitlines() if s.startswith("{")]
    listening = next(e for e in lines if e["event"] == "listening")
    assert listening["dim"] == 5 * 2 + 2  # logreg on 5 features, 2 classes: the file's shape, not blobs'
    assert [e["round"] for e in lines if e["event"] == "round"] == [1, 2]


def test_bad_data_flags_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli([*NODE, "--data", str(tmp_path / "missing.npz"), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no such file or folder" in err and len(err.splitlines()) == 1
    (tmp_path / "x.bin").write_bytes(b"0")
    assert cli([*NODE, "--data", str(tmp_path / "x.bin"), "--data-dir", str(tmp_path)]) == 2
    assert "KIND:PATH" in capsys.readouterr().err
    assert cli([*NODE, "--data", str(tmp_path / "x.bin"), "--nodes", "2", "--data-dir", str(tmp_path)]) == 2
    assert "does not take --nodes" in capsys.readouterr().err
