from __future__ import annotations

import os
from pathlib import Path

import pytest

from phalanx.node.identity import IdentityError, load_or_create_key, peer_id_of


def test_key_created_once_with_mode_0600_and_stable_peer_id(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "node.key"
    first = peer_id_of(load_or_create_key(path))
    assert path.stat().st_mode & 0o777 == 0o600
    assert peer_id_of(load_or_create_key(path)) == first
    assert first.startswith("12D3KooW")


def test_other_keys_give_other_peer_ids(tmp_path: Path) -> None:
    assert peer_id_of(load_or_create_key(tmp_path / "a")) != peer_id_of(load_or_create_key(tmp_path / "b"))


def test_world_readable_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k"
    load_or_create_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        load_or_create_key(path)


@pytest.mark.parametrize("text", ["", "hello", "phalanx-ed25519 zz", "phalanx-ed25519 " + "00" * 31])
def test_malformed_key_file_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "k"
    path.write_text(text)
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError):
        load_or_create_key(path)
