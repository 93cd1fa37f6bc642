from __future__ import annotations

from pathlib import Path

import pytest

from phalanx.node.config import ConfigError, build, neighbours_from_files, parse_value


def test_defaults_then_file_then_flags() -> None:
    config = build(
        {"rounds": 5, "lr": 0.1, "rule_params": {"f": 1}}, {"rounds": 7, "rule_params": {"tau": 2.0}}
    )
    assert (config.rounds, config.lr, config.rule_params) == (7, 0.1, {"f": 1, "tau": 2.0})
    assert config.key_path == Path("phalanx-node") / "node.key"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rounds": -1}, "rounds must be >= 0"),
        ({"rounds": True}, "rounds must be a whole number"),
        ({"lr": 0}, "lr must be > 0"),
        ({"lr": float("nan")}, "lr must be a finite number"),
        ({"listen": [1]}, "listen must be a list"),
        ({"rule_params": 3}, "rule-params must be a table"),
        ({"data_dir": ""}, "data-dir must be a path"),
        ({"bogus": 1}, "unknown setting 'bogus'"),
    ],
)
def test_bad_values(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(values, {})


def test_parse_value() -> None:
    assert [parse_value(t) for t in ("1", "0.5", "true", "alie", '"x"')] == [1, 0.5, True, "alie", "x"]


def test_neighbours_from_topology_file_and_address_book(tmp_path: Path) -> None:
    topology = tmp_path / "edges.txt"
    topology.write_text("# ring of 3\n0 1\n1 2\n2 0\n")
    book = tmp_path / "book.toml"
    book.write_text('[peers]\n"0" = "/a"\n"1" = "/b"\n"2" = "/c"\n')
    assert neighbours_from_files(topology, book, 1) == ("/a", "/c")
    topology.write_text("0 x\n")
    with pytest.raises(ConfigError, match="expected two node indices"):
        neighbours_from_files(topology, book, 0)
    topology.write_text("0 3\n")
    with pytest.raises(ConfigError, match="no address for node 3"):
        neighbours_from_files(topology, book, 0)
