"""Bad input to ``phalanx node run`` and ``phalanx net up``: one line, exit status 2, no traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from phalanx.cli import main

NODE = ["node", "run", "--dataset", "blobs", "--model", "logreg"]


def cli(argv: list[str]) -> int:
    """The exit status of ``phalanx ARGV`` (argparse errors exit; command errors return)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rounds", "x"], "argument --rounds: invalid int value"),
        (["--byzantine", "nope"], "unknown Byzantine behaviour or attack 'nope'"),
        (["--rule", "nope"], "unknown aggregation rule 'nope'"),
        (["--protocol", "nope"], "unknown protocol 'nope'"),
        (["--neighbour", "/ip4/127.0.0.1/tcp/1"], "needs /ip4/HOST/tcp/PORT/p2p/PEER_ID"),
        (["--neighbour", "garbage"], "bad peer multiaddr"),
        (["--listen", "nonsense"], "bad listen multiaddr"),
        (["--round-timeout", "0"], "round_timeout must be a finite number > 0, got 0"),
        (["--index", "3", "--nodes", "2"], "index 3 out of range for 2 nodes"),
        (["--rule-param", "novalue"], "--rule-param expects KEY=VALUE"),
        (["--topology-file", "t.txt"], "topology-file and address-book go together"),
    ],
)
def test_node_run_bad_flags(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli([*NODE, "--data-dir", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("phalanx node run: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_node_run_bad_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "node.toml"
    bad.write_text("rounds = 'many'\n")
    assert cli([*NODE, "--config", str(bad)]) == 2
    assert "rounds must be a whole number" in capsys.readouterr().err
    bad.write_text("no_such_key = 1\n")
    assert cli([*NODE, "--config", str(bad)]) == 2
    assert "unknown setting 'no_such_key'" in capsys.readouterr().err
    bad.write_text("this is not toml")
    assert cli([*NODE, "--config", str(bad)]) == 2
    assert capsys.readouterr().err.startswith("phalanx node run: error: config file")


def test_node_run_port_in_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code = cli(
            [
                *NODE,
                "--data-dir",
                str(tmp_path),
                "--listen",
                f"/ip4/127.0.0.1/tcp/{port}",
                "--rounds",
                "1",
                "--alone",
                "train",
            ]
        )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("phalanx node run: error: cannot listen"), err
    assert len(err.strip().splitlines()) == 1


def test_flags_override_the_config_file(tmp_path: Path) -> None:
    from phalanx.cli import build_parser
    from phalanx.node_cmd import config_from_args

    conf = tmp_path / "node.toml"
    conf.write_text('rounds = 7\nround_timeout = 2.5\nneighbours = ["a"]\n[rule_params]\nf = 1\n')
    args = build_parser().parse_args(
        ["node", "run", "--config", str(conf), "--rounds", "3", "--rule-param", "tau=2"]
    )
    config = config_from_args(args)
    assert (config.rounds, config.round_timeout, config.neighbours) == (3, 2.5, ("a",))
    assert config.rule_params == {"f": 1, "tau": 2}
    assert config.lr == 0.05  # the default, not overridden by an unset flag


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--kill", "3"], "expected NODE@ROUND"),
        (["--byzantine", "alie"], "expected NODE:ATTACK"),
        (["--nodes", "0"], "expected a whole number >= 1"),
    ],
)
def test_net_up_bad_flags(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["net", "up", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("phalanx net up: error: ") and message in err


def test_net_up_node_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        cli(["net", "up", "--nodes", "3", "--kill", "5@2", "--dataset", "blobs", "--out", str(tmp_path)]) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("phalanx net up: error: ") and "0..2" in err, err


def test_node_and_net_up_flags_take_nodeconfig_s_defaults_and_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One place for a node setting: net up's defaults are the node's, and both commands' help is the field's."""
    from dataclasses import fields

    from phalanx.cli import build_parser
    from phalanx.gossip.fields import describe
    from phalanx.node.config import NodeConfig

    defaults = NodeConfig()
    args = build_parser().parse_args(["net", "up"])
    for key in (
        "protocol",
        "rule",
        "local_steps",
        "gossip_steps",
        "round_timeout",
        "eval_every",
        "lr",
        "seed",
    ):
        assert getattr(args, key) == getattr(defaults, key), key
    assert cli(["node", "run", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for f in fields(NodeConfig):
        if f.name != "protocol":
            assert " ".join(describe(f).split()) in text, f.name
