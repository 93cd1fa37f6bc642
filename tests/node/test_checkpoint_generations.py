"""Two checkpoint generations and the fallback between them; checkpoints whose checksum is valid but whose
content is not (wrong field types, NaN or infinite parameters) refused with one CheckpointError line, from
the module and from ``phalanx node run`` (exit 2, no traceback)."""

from __future__ import annotations

import math
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import msgpack
import pytest
import torch

from phalanx.node.checkpoint import (
    MAGIC,
    Checkpoint,
    CheckpointError,
    load,
    load_latest,
    previous_path,
    save,
)

DIM = 10


def _ckpt(rnd: int) -> Checkpoint:
    return Checkpoint(
        round=rnd, params=torch.full((DIM,), float(rnd)), momentum=torch.zeros(DIM), peer_id="p"
    )


def forged(header_changes: dict[str, Any], params: list[float] | None = None) -> bytes:
    """A checkpoint with a valid CRC over a header and vectors of our choosing."""
    header = {"round": 3, "dim": DIM, "vectors": ["params", "momentum"], "steps": 1, "peer_id": "p"}
    header.update(header_changes)
    raw = msgpack.packb(header, use_bin_type=True)
    vectors = torch.tensor((params or [0.0] * DIM) + [0.0] * DIM, dtype=torch.float32).numpy().tobytes()
    body = MAGIC + len(raw).to_bytes(4, "big") + raw + vectors
    return body + zlib.crc32(body).to_bytes(4, "big")


def test_save_keeps_the_previous_generation(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.bin"
    for rnd in (1, 2, 3):
        save(path, _ckpt(rnd))
    loaded = load_latest(path, dim=DIM)
    assert loaded is not None and loaded.checkpoint.round == 3 and not loaded.fell_back
    assert load(previous_path(path), dim=DIM) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.bin", "checkpoint.prev.bin"]
    assert previous_path(path).stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "missing", "nan"])
def test_a_damaged_newest_falls_back_to_the_previous_and_says_why(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "checkpoint.bin"
    save(path, _ckpt(4))
    save(path, _ckpt(5))
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[40] ^= 0xFF
        path.write_bytes(data)
    elif damage == "truncate":
        path.write_bytes(data[:-7])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "missing":  # a crash between save's two renames
        path.unlink()
    else:
        path.write_bytes(forged({"round": 5}, [math.nan] * DIM))
    loaded = load_latest(path, dim=DIM)
    assert loaded is not None and loaded.fell_back
    assert loaded.checkpoint.round == 4 and loaded.path == previous_path(path)
    assert str(path) in loaded.skipped and "\n" not in loaded.skipped


def test_no_usable_generation_is_one_error_naming_both(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.bin"
    save(path, _ckpt(1))
    save(path, _ckpt(2))
    path.write_bytes(b"junk")
    previous_path(path).write_bytes(b"junk too")
    with pytest.raises(CheckpointError, match="previous generation") as info:
        load(path, dim=DIM)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "change",
    [
        {"steps": "many"},
        {"steps": [1]},
        {"steps": -1},
        {"peer_id": 7},
        {"view": 5},
        {"view": ["a", 1]},
        {"counters": [1, 2]},
        {"counters": {"bytes_in": "lots"}},
        {"bans": {"x": "forever"}},
        {"bans": {"x": math.inf}},
        {"extra": 3},
        {"round": 2.5},
    ],
    ids=lambda c: "-".join(f"{k}={v!r}" for k, v in c.items()),
)
def test_valid_checksum_wrong_field_type_is_one_error(tmp_path: Path, change: dict[str, Any]) -> None:
    path = tmp_path / "checkpoint.bin"
    path.write_bytes(forged(change))
    with pytest.raises(CheckpointError) as info:
        load(path, dim=DIM)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_parameters_are_refused(tmp_path: Path, value: float) -> None:
    path = tmp_path / "checkpoint.bin"
    path.write_bytes(forged({}, [0.0] * (DIM - 1) + [value]))
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load(path, dim=DIM)


def test_node_run_with_a_forged_checkpoint_exits_2_with_one_line(tmp_path: Path) -> None:
    from phalanx.node.checkpoint import FILENAME

    data_dir = tmp_path / "node"
    data_dir.mkdir()
    dim = 32 * 10 + 10  # blobs + logreg
    header = {"round": 3, "dim": dim, "vectors": ["params", "momentum"], "steps": [1]}
    raw = msgpack.packb(header, use_bin_type=True)
    body = MAGIC + len(raw).to_bytes(4, "big") + raw + b"\0" * (8 * dim)
    (data_dir / FILENAME).write_bytes(body + zlib.crc32(body).to_bytes(4, "big"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "phalanx",
            "node",
            "run",
            "--dataset",
            "blobs",
            "--model",
            "logreg",
            "--data-dir",
            str(data_dir),
            "--rounds",
            "1",
            "--metrics-port",
            "-1",
            "--alone",
            "train",  # no neighbours: let it get as far as its checkpoint
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "steps" in lines[0] and "Traceback" not in proc.stderr
