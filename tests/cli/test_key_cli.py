"""``phalanx key new`` and ``phalanx key show``: a 0600 key that is never overwritten by accident, its peer id,
and the addresses a node with it would announce."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from phalanx.cli import main
from phalanx.node.addresses import interface_addresses
from phalanx.node.identity import load_key, peer_id_of


def cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"phalanx {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_key_new_writes_a_private_key_and_prints_its_peer_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "keys" / "a.key"
    assert cli(["key", "new", str(path)]) == 0
    printed = capsys.readouterr().out.strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert printed == peer_id_of(load_key(path)) and printed.startswith("12D3KooW")


def test_key_new_refuses_to_overwrite_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "a.key"
    assert cli(["key", "new", str(path)]) == 0
    first = capsys.readouterr().out.strip()
    before = path.read_bytes()
    assert cli(["key", "new", str(path)]) == 2
    line = one_error_line(capsys.readouterr().err, "key new")
    assert "exists" in line and first in line and "--force" in line
    assert path.read_bytes() == before
    assert cli(["key", "new", "--force", str(path)]) == 0
    second = capsys.readouterr().out.strip()
    assert second != first and peer_id_of(load_key(path)) == second
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["a.key"]  # no temporary file left behind


def test_key_show_prints_peer_id_and_announced_addresses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "a.key"
    cli(["key", "new", str(path)])
    peer = capsys.readouterr().out.strip()
    assert cli(["key", "show", str(path), "--listen", "/ip4/127.0.0.1/tcp/4001", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == {"peer_id": peer, "addresses": [f"/ip4/127.0.0.1/tcp/4001/p2p/{peer}"], "notes": []}
    assert cli(["key", "show", str(path), "--announce", "/dns4/node.example/tcp/4001", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["addresses"] == [f"/dns4/node.example/tcp/4001/p2p/{peer}"]
    assert cli(["key", "show", str(path)]) == 0  # default listen port 0: said, not hidden
    out = capsys.readouterr().out
    assert out.startswith(f"peer id  {peer}\n") and "port 0 is chosen when the node starts" in out


def test_key_show_never_announces_a_wildcard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.key"
    cli(["key", "new", str(path)])
    peer = capsys.readouterr().out.strip()
    assert cli(["key", "show", str(path), "--listen", "/ip4/0.0.0.0/tcp/4001", "--json"]) == 0
    addrs = json.loads(capsys.readouterr().out)["addresses"]
    assert not any("0.0.0.0" in a for a in addrs)
    ours = {a.address for a in interface_addresses() if a.family == "ip4"}
    assert addrs and all(a.endswith(f"/tcp/4001/p2p/{peer}") for a in addrs)
    assert {a.split("/")[2] for a in addrs} <= ours


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["key", "show", "{missing}"], "does not exist; make one with 'phalanx key new"),
        (["key", "show", "{bad}"], "is not a phalanx ed25519 key"),
        (["key", "show", "{key}", "--announce", "/ip4/0.0.0.0/tcp/1"], "is a wildcard"),
        (["key", "show", "{key}", "--announce", "nonsense"], "bad announce multiaddr"),
        (["key", "show", "{key}", "--listen", "nonsense"], "bad listen multiaddr"),
        (["key", "new", "{dir}"], "is a directory"),
    ],
)
def test_key_bad_input_is_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, bad = tmp_path / "k", tmp_path / "bad"
    cli(["key", "new", str(key)])
    bad.write_text("not a key\n")
    bad.chmod(0o600)
    capsys.readouterr()
    names = {"missing": tmp_path / "nope", "bad": bad, "key": key, "dir": tmp_path}
    argv = [a.format(**names) for a in argv]
    assert cli(argv) == 2
    line = one_error_line(capsys.readouterr().err, " ".join(argv[:2]))
    assert message in line, line
