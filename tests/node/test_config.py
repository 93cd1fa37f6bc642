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
        ({"rounds": -1}, "rounds must be >= 0, got -1"),
        ({"rounds": True}, "rounds must be a whole number"),
        ({"lr": 0}, "lr must be a finite number > 0, got 0"),
        ({"lr": float("nan")}, "lr must be a finite number > 0, got nan"),
        ({"lr": "inf"}, "lr must be a finite number > 0, got inf"),
        ({"momentum": 1}, r"momentum must be in \[0, 1\), got 1"),
        ({"metrics_port": -2}, "metrics_port must be >= -1"),
        ({"listen": [1]}, "listen must be a list"),
        ({"listen": [""]}, "listen must be a list of multiaddr strings"),
        ({"rule_params": 3}, "rule_params must be a table"),
        ({"data_dir": ""}, "data_dir must be a path"),
        ({"key": 3}, "key must be a path"),
        ({"bogus": 1}, "unknown setting 'bogus'"),
        ({"round_timout": 1}, "unknown setting 'round_timout' \\(did you mean 'round_timeout'\\?\\)"),
        ({"index": 2, "nodes": 2}, "index 2 out of range for 2 nodes"),
        ({"topology_file": "t.txt"}, "topology-file and address-book go together"),
    ],
)
def test_bad_values(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        build(values, {})
    assert "\n" not in str(info.value)


def test_values_take_their_field_types() -> None:
    config = build(
        {"listen": "/ip4/0.0.0.0/tcp/1", "data_dir": "~/x", "key": "", "lr": 1, "metrics_port": -1},
        {"round-timeout": 3},
    )
    assert config.listen == ("/ip4/0.0.0.0/tcp/1",)  # one multiaddr stands for a list of one
    assert config.data_dir == Path("~/x").expanduser() and config.key is None
    assert config.lr == 1.0 and isinstance(config.lr, float) and config.round_timeout == 3.0


def test_one_config_error_one_training_default_for_node_sim_and_learner() -> None:
    from phalanx.gossip import fields
    from phalanx.node.config import NodeConfig
    from phalanx.node.learner import TrainConfig
    from phalanx.node.train_settings import TRAINING
    from phalanx.sim import config as sim_config

    assert ConfigError is sim_config.ConfigError is fields.ConfigError
    node, sim, train = NodeConfig(), sim_config.SimConfig(), TrainConfig()
    for key, (default, _) in TRAINING.items():
        assert getattr(node, key) == getattr(sim, key) == default, key
        if hasattr(train, key):
            assert getattr(train, key) == default, key


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
