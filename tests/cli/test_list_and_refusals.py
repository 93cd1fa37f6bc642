"""``phalanx list`` (one line each, from the registries a run reads) and invalid values refused in one line."""

from __future__ import annotations

import json

import pytest

from phalanx.cli import main
from phalanx.gossip import registry
from phalanx.gossip.aggregator import rule_names
from phalanx.gossip.byzantine import attack_names
from phalanx.sim.config import preset_names
from phalanx.sim.topology import names as topology_names

SMALL = ["--dataset", "blobs", "--nodes", "8", "--rounds", "2", "--no-plots", "--no-progress"]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("rules", rule_names),
        ("attacks", attack_names),
        ("protocols", registry.names),
        ("topologies", topology_names),
        ("presets", preset_names),
    ],
)
def test_list_prints_one_line_per_entry_of_the_registry(kind, expected, capsys) -> None:
    assert main(["list", kind]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(expected())
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines)  # every entry says what it is


def test_list_of_something_unknown_is_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["list", "models"])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--local-steps", "0"], "--local-steps"),
        (
            ["--rule", "mean", "--rule-param", "zzz=1"],
            "rule mean (D-PSGD mixing) takes no parameter; got zzz",
        ),
        (
            ["--crash-fraction", "0.25", "--crash-placement", "relays"],
            "relays needs 2 honest nodes without data",
        ),
        (["--partition", "iid:relays=1"], "iid:relays needs a fraction"),
    ],
)
def test_invalid_values_are_one_line_and_exit_2(argv, match, tmp_path, capsys) -> None:
    try:
        code = main(["sim", *SMALL, "--out", str(tmp_path / "run"), *argv])
    except SystemExit as exc:  # argparse's own refusals
        code = int(exc.code or 0)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and match in err[0], err
    assert not (tmp_path / "run").exists()


def test_relays_under_iid_crash_only_data_less_nodes_and_the_run_says_which(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["--partition", "iid:relays=0.25", "--crash-fraction", "0.25", "--crash-placement", "relays"]
    assert (
        main(
            ["sim", *SMALL, "--topology", "barabasi-albert:2", "--crash-round", "1", "--out", str(out), *argv]
        )
        == 0
    )
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["crashed"]) == 2 and "acc_avg" in summary
    shown = ", ".join(f"{i}: {d}" for i, d in summary["crashed_degrees"].items())
    assert f"crashing (node: degree): {shown} at round 1" in printed
    nodes = [json.loads(x) for x in (out / "nodes.jsonl").read_text().splitlines()]
    assert len(nodes) == 8 and {n["node"] for n in nodes if not n["alive"]} == set(summary["crashed"])
