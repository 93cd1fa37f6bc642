"""The sampling protocols in the simulator: registry, Byzantine MoDeST nodes, churn traces, the CLI."""

from __future__ import annotations

import json

import pytest

from phalanx.cli import main
from phalanx.gossip import registry
from phalanx.gossip.byzantine import ByzantineModest
from phalanx.gossip.modest import Modest
from phalanx.sim.churn import ChurnError, churn_from_rates, read_churn_csv, write_churn_csv
from phalanx.sim.config import ConfigError, SimConfig
from phalanx.sim.experiment import Result, plan, run


def small(**changes) -> SimConfig:
    values = dict(
        nodes=16,
        rounds=8,
        dataset="blobs",
        model="mlp",
        local_steps=3,
        protocol="modest",
        protocol_params={"s": 4, "a": 2},
        eval_every=1,
    )
    values.update(changes)
    return SimConfig(**values)


def simulate(config: SimConfig) -> Result:
    return run(plan(config))


def test_registered():
    assert {"modest", "el-local", "el-oracle", "dpsgd"} <= set(registry.names())


def test_modest_runs_every_round_through_the_one_pipeline_and_counts_pings():
    result = simulate(small())
    rows = result.rows
    assert [r["round"] for r in rows] == list(range(8))
    assert all(r["honest_reported"] == 4 for r in rows)  # the s trainers of round k + 1 report round k
    assert rows[-1]["acc_mean"] > 0.5
    counters = rows[-1]["counters"]
    assert counters["pings"] > 0 and counters["aggregations"] >= 8 and counters["rule_failures"] == 0
    dim = result.protocols["0"].model.numel()
    models = counters["trainings"] + counters["aggregations"]  # each sends at least one model
    assert result.engine_stats["bytes"] > models * 4 * dim  # every byte is from an encoded message


def test_modest_writes_each_row_while_the_run_goes_on():
    """Defect 6: rows used to appear only at the end of a MoDeST run (the progress bar froze)."""
    seen: list[tuple[int, float]] = []
    result = run(plan(small(rounds=6)), progress=lambda row: seen.append((row["round"], row["virtual_time"])))
    assert [r for r, _ in seen] == list(range(6))
    final_time = result.engine_stats["virtual_time"]
    assert seen[0][1] < seen[-1][1] <= final_time
    assert seen[2][1] < final_time / 2  # round 2 came out well before the run ended


@pytest.mark.parametrize("protocol", ["el-local", "el-oracle"])
def test_epidemic_learning_runs(protocol):
    rows = simulate(small(protocol=protocol, protocol_params={"s": 3}, eval_every=2)).rows
    assert [r["round"] for r in rows] == list(range(8)) and all(r["honest_reported"] == 16 for r in rows)


def test_byzantine_nodes_are_wrapped_and_the_run_survives():
    config = small(
        byzantine_nodes=(1, 2),
        attack="sign-flip",
        protocol_params={"s": 4, "a": 3, "byzantine_roles": "aggregator", "trainer_combine_rule": "median"},
    )
    result = simulate(config)
    assert isinstance(result.protocols["1"], ByzantineModest) and isinstance(result.protocols["0"], Modest)
    assert len(result.rows) == 8


def test_crashes_mid_run_are_routed_around():
    result = simulate(small(rounds=14, crash_fraction=0.75, crash_round=5))
    assert len(result.rows) == 14 and result.rows[-1]["live"] == 4


def test_churn_csv_trace_for_modest(tmp_path):
    path = tmp_path / "churn.csv"
    path.write_text("time,node,event\n0.3,3,crash\n0.2,5,leave\n1.0,5,join\n0.5,15,join\n")
    trace = read_churn_csv(path, nodes=16)
    assert trace["5"] == ((0.2, "leave"), (1.0, "join")) and trace["15"] == ((0.5, "join"),)
    result = simulate(small(rounds=16, churn_trace=str(path), eval_every=4))
    assert len(result.rows) == 16
    newcomer = result.protocols["15"]
    assert isinstance(newcomer, Modest) and newcomer.view.is_member("15") and len(newcomer.view) == 16
    assert result.protocols["0"].view.get("5").counter == 3  # left (2) then joined again (3)


@pytest.mark.parametrize("protocol", ["dpsgd", "el-local"])
def test_the_same_churn_trace_drives_every_protocol(tmp_path, protocol):
    """Churn and crashes come from one fault schedule for every protocol, not from MoDeST's own timers."""
    path = tmp_path / "churn.csv"
    path.write_text("time,node,event\n0.05,5,leave\n0.3,5,join\n0.1,7,crash\n")
    result = simulate(
        small(
            protocol=protocol,
            protocol_params={"s": 3} if protocol != "dpsgd" else {},
            topology="regular:4",
            rounds=10,
            churn_trace=str(path),
        )
    )
    assert len(result.rows) == 10
    assert min(r["live"] for r in result.rows) < 16  # 5 and 7 were away
    assert result.rows[-1]["live"] == 15  # 5 came back, 7 crashed for good


def test_churn_rates_are_per_virtual_second_and_named_so(tmp_path):
    config = small(rounds=10, churn_leave_rate=0.2, churn_rejoin_rate=1.0, churn_late=0.1)
    result = simulate(config)
    assert len(result.rows) == 10
    with pytest.raises(ConfigError, match="churn_leave_rate must be a finite number >= 0"):
        small(churn_leave_rate=-1.0)


def test_churn_from_rates_is_deterministic_and_round_trips(tmp_path):
    trace = churn_from_rates(30, leave=0.2, crash=0.1, rejoin=0.5, horizon=10, seed=1, late=0.2)
    assert trace == churn_from_rates(30, leave=0.2, crash=0.1, rejoin=0.5, horizon=10, seed=1, late=0.2)
    assert sum(1 for evs in trace.values() if evs[0][1] == "join") >= 6
    write_churn_csv(trace, tmp_path / "t.csv")
    assert read_churn_csv(tmp_path / "t.csv", nodes=30) == trace


@pytest.mark.parametrize(
    "text",
    [
        "time,node\n1,2\n",
        "time,node,event\n1,99,join\n",
        "time,node,event\nx,1,join\n",
        "time,node,event\n1,1,explode\n",
    ],
)
def test_bad_churn_traces(tmp_path, text):
    (tmp_path / "c.csv").write_text(text)
    with pytest.raises(ChurnError):
        read_churn_csv(tmp_path / "c.csv", nodes=10)
    with pytest.raises(ConfigError):
        plan(small(nodes=10, churn_trace=str(tmp_path / "c.csv")))


def test_bad_protocol_params_are_config_errors():
    with pytest.raises(ConfigError):
        plan(small(protocol_params={"s": 4, "bogus": 1}))
    with pytest.raises(ConfigError):
        plan(small(protocol_params={"s": 0}))
    with pytest.raises(ConfigError, match="s = 16 exceeds the 15 other peers"):
        plan(small(protocol="el-oracle", protocol_params={"s": 16}))


def test_cli_runs_modest(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "sim",
            "--protocol",
            "modest",
            "--nodes",
            "12",
            "--rounds",
            "4",
            "--dataset",
            "blobs",
            "--protocol-param",
            "s=3",
            "--protocol-param",
            "a=2",
            "--no-plots",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2, 3]


@pytest.mark.slow
def test_checks_at_small_scale():
    """The issue's checks on blobs at 40 nodes: dropout, Byzantine aggregators, bytes against D-PSGD."""
    rows = simulate(
        small(
            nodes=40,
            rounds=16,
            lr=0.002,
            local_steps=2,
            protocol_params={"s": 5, "a": 2, "success_fraction": 0.5},
            crash_fraction=0.8,
            crash_round=6,
        )
    ).rows
    assert len(rows) == 16 and rows[-1]["live"] == 8
    assert max(r["acc_mean"] for r in rows[7:]) > rows[5]["acc_mean"]

    def final(**changes):
        r = simulate(small(nodes=40, rounds=10, **changes))
        return r.rows[-1]["acc_mean"], r.engine_stats["bytes"]

    params = {"s": 5, "a": 5, "byzantine_roles": "aggregator"}
    attack = {"byzantine_nodes": (0, 1, 2, 3), "attack": "large-value", "attack_params": {"value": 1000.0}}
    clean, modest_bytes = final(protocol_params=params)
    plain, _ = final(protocol_params=params, **attack)
    robust, _ = final(protocol_params={**params, "trainer_combine_rule": "median"}, **attack)
    assert robust >= clean - 0.02 and plain < 0.5
    _, dpsgd_bytes = final(protocol="dpsgd", topology="regular:4", protocol_params={})
    assert dpsgd_bytes > 3 * modest_bytes
