from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from phalanx.node.checkpoint import Checkpoint, CheckpointError, from_bytes, load, save, to_bytes


def _ckpt(dim: int = 10, rnd: int = 4) -> Checkpoint:
    return Checkpoint(
        round=rnd,
        params=torch.randn(dim),
        momentum=torch.randn(dim),
        steps=17,
        peer_id="p",
        view=["a", "b"],
        counters={"bytes_in": 5, "rejected:malformed": 2},
        bans={"x": 30.0},
        extra={"protocol": "dpsgd"},
    )


def test_save_load_round_trip(tmp_path: Path) -> None:
    ck = _ckpt()
    save(tmp_path / "c.bin", ck)
    got = load(tmp_path / "c.bin", dim=10)
    assert got is not None
    assert torch.equal(got.params, ck.params) and torch.equal(got.momentum, ck.momentum)
    assert (got.round, got.steps, got.view, got.counters, got.bans, got.extra) == (
        4,
        17,
        ["a", "b"],
        ck.counters,
        ck.bans,
        ck.extra,
    )
    assert [p.name for p in tmp_path.iterdir()] == ["c.bin"]  # no temp file left behind
    assert (tmp_path / "c.bin").stat().st_mode & 0o777 == 0o600


def test_missing_checkpoint_is_none(tmp_path: Path) -> None:
    assert load(tmp_path / "none.bin") is None


def test_save_replaces_previous(tmp_path: Path) -> None:
    save(tmp_path / "c.bin", _ckpt(rnd=1))
    save(tmp_path / "c.bin", _ckpt(rnd=2))
    got = load(tmp_path / "c.bin")
    assert got is not None and got.round == 2


def test_wrong_dimension_is_refused(tmp_path: Path) -> None:
    save(tmp_path / "c.bin", _ckpt(dim=10))
    with pytest.raises(CheckpointError, match="10 parameters"):
        load(tmp_path / "c.bin", dim=11)


@given(st.data())
def test_any_corruption_is_detected(data: st.DataObject) -> None:
    raw = bytearray(to_bytes(_ckpt()))
    mode = data.draw(st.sampled_from(["flip", "truncate"]))
    if mode == "flip":
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
    else:
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    with pytest.raises(CheckpointError):
        from_bytes(bytes(raw))
