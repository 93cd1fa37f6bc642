"""``phalanx sim`` / ``phalanx sweep``: outputs on disk, presets, and one-line errors with exit status 2."""

from __future__ import annotations

import csv
import json
import tomllib

import pytest

from phalanx.cli import main
from phalanx.sim.config import from_mapping, load_preset, preset_names
from phalanx.sim.experiment import plan


def status(argv: list[str]) -> int:
    """Exit status as the shell sees it (argparse exits by itself, the command returns)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


SMALL = ["--dataset", "blobs", "--nodes", "8", "--rounds", "4", "--topology", "ring", "--no-progress"]


def test_sim_writes_config_metrics_summary_and_plots(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["sim", *SMALL, "--eval-every", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "acc mean" in text and "spectral gap" in text
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert {
        "acc_mean",
        "acc_min",
        "acc_max",
        "loss_mean",
        "consensus",
        "bytes",
        "messages",
        "live",
        "wall_time",
    } <= set(rows[-1])
    assert rows[-1]["acc_mean"] is not None and rows[-1]["bytes"] > rows[0]["bytes"]
    config = from_mapping(tomllib.loads((out / "config.toml").read_text()))
    assert config.nodes == 8 and config.topology == "ring" and config.dataset == "blobs"
    for png in ("accuracy_vs_round.png", "accuracy_vs_bytes.png", "topology.png"):
        assert (out / png).stat().st_size > 1000


def test_config_file_then_flags(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('nodes = 6\nrounds = 3\ntopology = "complete"\ndataset = "blobs"\n[rule_params]\nf = 1\n')
    out = tmp_path / "run"
    assert (
        main(
            [
                "sim",
                "--config",
                str(path),
                "--rounds",
                "2",
                "--rule",
                "trimmed-mean",
                "--out",
                str(out),
                "--no-plots",
                "--no-progress",
            ]
        )
        == 0
    )
    config = from_mapping(tomllib.loads((out / "config.toml").read_text()))
    assert (config.nodes, config.rounds, config.rule, config.rule_params) == (6, 2, "trimmed-mean", {"f": 1})


def test_list_presets(capsys) -> None:
    assert main(["sim", "--list-presets"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("quickstart", "demo-alie", "malicious-ring"))


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_is_valid(name: str) -> None:
    data = load_preset(name)
    data.pop("sweep", None)
    plan(from_mapping(data))


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--topology", "moebius"], "unknown topology"),
        (["--loss", "-0.5"], "argument --loss"),
        (["--rule", "trimmed-mean", "--rule-param", "f=2", "--topology", "ring"], "cannot tolerate f=2"),
        (["--rule", "nope"], "unknown rule"),
        (["--attack", "nope", "--byzantine-fraction", "0.25"], "unknown attack"),
        (["--preset", "nope"], "unknown preset"),
        (["--churn-leave", "2"], "fraction"),
        (["--crash-nodes", "3,x"], "node ids"),
        (["--partition-rounds", "5"], "START:END"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, match, capsys) -> None:
    assert status(["sim", *SMALL, *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("phalanx sim: error:") and match in err


def test_disconnected_graph_file_and_unknown_key(tmp_path, capsys) -> None:
    graph = tmp_path / "g.txt"
    graph.write_text("0 1\n2 3\n4 5\n6 7\n")
    assert main(["sim", *SMALL, "--topology", f"file:{graph}"]) == 2
    assert "not connected" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text("nodez = 3\n")
    assert main(["sim", "--config", str(bad)]) == 2
    assert "unknown setting 'nodez'" in capsys.readouterr().err


def test_sweep_writes_csv_and_heatmap(tmp_path, capsys) -> None:
    out = tmp_path / "sweep"
    argv = [
        "sweep",
        *SMALL[:-1],
        "--grid",
        "topology=ring,complete",
        "--grid",
        "seed=0,1",
        "--workers",
        "1",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["topology"], r["seed"]) for r in rows] == [
        ("ring", "0"),
        ("ring", "1"),
        ("complete", "0"),
        ("complete", "1"),
    ]
    assert all(0 <= float(r["acc_mean"]) <= 1 for r in rows)
    assert (out / "heatmap.png").stat().st_size > 1000


def test_sweep_rejects_a_bad_point_before_training(tmp_path, capsys) -> None:
    argv = ["sweep", *SMALL[:-1], "--grid", "topology=ring,nope", "--workers", "1", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "unknown topology 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "results.csv").exists()


def test_sweep_keeps_the_presets_settings(tmp_path) -> None:
    out = tmp_path / "sweep"
    assert (
        main(
            [
                "sweep",
                "--preset",
                "churn",
                "--rounds",
                "2",
                "--nodes",
                "8",
                "--grid",
                "seed=0",
                "--workers",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    (run_dir,) = (out / "runs").iterdir()
    config = from_mapping(tomllib.loads((run_dir / "config.toml").read_text()))
    assert (config.churn_leave, config.loss, config.rounds, config.nodes) == (0.05, 0.05, 2, 8)


def test_every_setting_has_its_flag_and_the_help_is_the_field_s(capsys) -> None:
    """Flags and their help are defined once, on SimConfig's fields: a new field gets its flag (or is
    named here as file-only), and the help shown is the field's own text, with its default."""
    from dataclasses import fields

    from phalanx.gossip.fields import describe
    from phalanx.sim.config import SimConfig
    from phalanx.sim_cmd import FLAGS, SWITCHES

    file_only = {"crash_rounds", "attacks", "churn_horizon"}  # tables and a derived default
    tables = {"rule_params", "attack_params", "protocol_params"}
    covered = {key for key, _ in FLAGS} | set(SWITCHES) | tables | file_only
    assert covered == {f.name for f in fields(SimConfig)}
    assert status(["sim", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for f in fields(SimConfig):
        if f.name in covered - tables - file_only and f.name not in ("topology", "protocol"):
            assert describe(f) and " ".join(describe(f).split()) in text, f.name
    assert "--lr LR learning rate (default: 0.05)" in text


@pytest.mark.parametrize("command", [["sim"], ["sweep"], ["net", "up"]])
def test_topology_help_lists_the_registry(command, capsys) -> None:
    from phalanx.sim import topology

    assert status([*command, "--help"]) == 0
    text = "".join(capsys.readouterr().out.split())  # argparse breaks lines at hyphens
    for usage in topology.names():
        assert usage in text, usage
