"""``phalanx sweep``: folders never overwritten silently, --seeds and ``seeds = [...]``, --ray without ray."""

from __future__ import annotations

import csv
import sys

import pytest

from phalanx.cli import main

SMALL = ["--dataset", "blobs", "--nodes", "6", "--rounds", "2", "--topology", "ring", "--eval-every", "1"]


def status(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def one_line(err: str, start: str) -> None:
    assert err.count("\n") == 1 and "Traceback" not in err and err.startswith(start)


def test_a_non_empty_out_folder_is_refused_unless_overwrite(tmp_path, capsys) -> None:
    (tmp_path / "results.csv").write_text("old\n")
    argv = ["sweep", *SMALL, "--grid", "seed=0", "--workers", "1", "--no-plots", "--out", str(tmp_path)]
    assert status(argv) == 2
    err = capsys.readouterr().err
    one_line(err, "phalanx sweep: error: output folder")
    assert "--overwrite" in err and (tmp_path / "results.csv").read_text() == "old\n"
    assert status([*argv, "--overwrite"]) == 0
    assert (tmp_path / "results.csv").read_text().startswith("seed,")


@pytest.mark.parametrize("seeds", ["0,x", "1,1", ","])
def test_bad_seeds_are_one_line(tmp_path, capsys, seeds) -> None:
    assert status(["sweep", *SMALL, "--seeds", seeds, "--out", str(tmp_path / "o")]) == 2
    one_line(capsys.readouterr().err, "phalanx sweep: error: argument --seeds")


def test_seeds_and_a_grid_over_seed_are_refused(tmp_path, capsys) -> None:
    argv = ["sweep", *SMALL, "--seeds", "0,1", "--grid", "seed=0,1", "--out", str(tmp_path / "o")]
    assert status(argv) == 2
    one_line(capsys.readouterr().err, "phalanx sweep: error: sweep: seeds and a grid over seed")


def test_seeds_from_the_config_file(tmp_path, capsys) -> None:
    config = tmp_path / "study.toml"
    config.write_text('seeds = [3, 4]\nrule = "median"\n[sweep]\nbyzantine_fraction = [0.0, 0.2]\n')
    out = tmp_path / "out"
    argv = ["sweep", "--config", str(config), *SMALL, "--workers", "1", "--no-plots", "--out", str(out)]
    assert status(argv) == 0
    text = capsys.readouterr().out
    assert "2 cells x 2 seeds" in text and " ± " in text
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["seeds"] for r in rows] == ["2", "2"] and all(r["acc_min_std"] for r in rows)
    assert sorted(p.name for p in (out / "runs" / "0.2").iterdir() if p.is_dir()) == ["seed-3", "seed-4"]
    assert (out / "heatmap.png").is_file() and (out / "heatmap.pdf").is_file()
    with open(out / "timings.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 4


def test_bad_seeds_in_the_config_file_are_one_line(tmp_path, capsys) -> None:
    config = tmp_path / "study.toml"
    config.write_text('seeds = [1, "x"]\n')
    assert status(["sweep", "--config", str(config), *SMALL, "--out", str(tmp_path / "o")]) == 2
    one_line(capsys.readouterr().err, "phalanx sweep: error: seeds must be")


def test_ray_without_the_ray_package_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    assert status(["sweep", *SMALL, "--ray", "auto", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    one_line(err, "phalanx sweep: error: --ray needs the ray package")
    assert "phalanx[ray]" in err


def test_an_unreachable_or_malformed_ray_address_is_one_line_without_waiting() -> None:
    import socket

    from phalanx.sim.config import ConfigError
    from phalanx.sim.ray_pool import check_reachable

    with socket.socket() as probe:  # a port nothing listens on: bound, then closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConfigError, match=f"cannot reach the Ray cluster at 127.0.0.1:{port}"):
        check_reachable(f"127.0.0.1:{port}")
    with pytest.raises(ConfigError, match="expects auto, local, HOST:PORT"):
        check_reachable("nonsense")
    with socket.socket() as server:  # a listening port is reachable
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_reachable(f"ray://127.0.0.1:{server.getsockname()[1]}")
