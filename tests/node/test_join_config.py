"""The joining flags: a bootstrap list from a TOML file, --degree only for D-PSGD and honest nodes, --data."""

from __future__ import annotations

from pathlib import Path

import pytest

from phalanx.node import config as cfg
from phalanx.node.app import check, data_spec, joins_by_membership

ADDR = "/ip4/10.0.0.1/tcp/4001/p2p/12D3KooWEeooVe3Cohx77vrpziWWfkeHWZsk9QC1HuZ6BbJBbzBu"


def test_bootstrap_list_from_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(f'bootstrap = ["{ADDR}", "{ADDR.replace("10.0.0.1", "10.0.0.2")}"]\ndegree = 3\n')
    config = cfg.build(cfg.load_toml(path), {})
    assert len(config.bootstrap) == 2 and config.degree == 3
    check(config)
    assert joins_by_membership(config, ())
    assert not joins_by_membership(config, (ADDR,))  # a fixed neighbour list stays a fixed list


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"degree": 2, "protocol": "modest"}, "--degree chooses D-PSGD neighbours"),
        ({"degree": 2, "byzantine": "alie"}, "not available to a Byzantine node"),
        ({"protocol": "el-oracle", "bootstrap": [ADDR]}, "el-oracle needs every node"),
    ],
)
def test_joining_flags_that_cannot_work_are_refused(values: dict[str, object], message: str) -> None:
    with pytest.raises(cfg.ConfigError, match=message):
        check(cfg.build({}, values))


def test_data_paths_become_loader_specs(tmp_path: Path) -> None:
    (tmp_path / "a.npz").write_bytes(b"")
    (tmp_path / "b.csv").write_text("x,label\n")
    assert data_spec(str(tmp_path / "a.npz")) == f"npz:{tmp_path / 'a.npz'}"
    assert data_spec(str(tmp_path / "b.csv")) == f"csv:{tmp_path / 'b.csv'}"
    assert data_spec(str(tmp_path)) == f"idx:{tmp_path}"
    assert data_spec("cifar10:/somewhere") == "cifar10:/somewhere"
