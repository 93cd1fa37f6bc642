"""The sampling protocols in the simulator: registry, Byzantine MoDeST nodes, churn traces, the CLI."""

from __future__ import annotations

import json

import pytest

from phalanx.cli import main
from phalanx.gossip.messages import AggregatedModel, Ping, Pong, TrainedModel
from phalanx.gossip.modest import ByzantineModest, Modest
from phalanx.sim.churn import ChurnError, churn_from_rates, read_churn_csv, write_churn_csv
from phalanx.sim.config import ConfigError, SimConfig
from phalanx.sim.protocols import PROTOCOLS
from phalanx.sim.sampling_runs import crash_at, simulate


def small(**changes) -> SimConfig:
    values = dict(
        nodes=16,
        rounds=8,
        dataset="blobs",
        model="mlp",
        local_steps=3,
        protocol="modest",
        protocol_params={"s": 4, "a": 2},
    )
    values.update(changes)
    return SimConfig(**values)


class Count:
    def __init__(self) -> None:
        self.kinds: dict[str, int] = {}

    def on_send(self, engine, node, peer, message, size, now) -> None:
        self.kinds[type(message).__name__] = self.kinds.get(type(message).__name__, 0) + 1


def test_registered():
    assert {"modest", "el-local", "el-oracle", "dpsgd"} <= set(PROTOCOLS)


def test_modest_runs_every_round_and_counts_pings_and_views():
    count = Count()

    def hook(engine, r):
        if r == 0:
            engine.observers.append(count)
            engine._send_obs.append(count)

    run = simulate(small(), eval_every=1, on_round=hook)
    assert [r.round for r in run.rows] == list(range(8))
    assert all(r.reporters == 4 for r in run.rows)
    assert run.rows[-1].acc is not None and run.rows[-1].acc > 0.5
    names = {Ping.__name__, Pong.__name__, TrainedModel.__name__, AggregatedModel.__name__}
    assert names <= set(count.kinds)
    # every byte is from an encoded message: more than the models alone
    assert (
        run.engine.bytes_sent
        > (count.kinds["TrainedModel"] + count.kinds["AggregatedModel"]) * 4 * run.worker.trainer.dim
    )


@pytest.mark.parametrize("protocol", ["el-local", "el-oracle"])
def test_epidemic_learning_runs(protocol):
    run = simulate(small(protocol=protocol, protocol_params={"s": 3}), eval_every=2)
    assert [r.round for r in run.rows] == list(range(8)) and all(r.reporters == 16 for r in run.rows)


def test_byzantine_nodes_are_wrapped_and_the_run_survives():
    config = small(
        byzantine_nodes=(1, 2),
        attack="sign-flip",
        protocol_params={"s": 4, "a": 3, "byzantine_roles": "aggregator", "trainer_combine_rule": "median"},
    )
    run = simulate(config, eval_every=1)
    assert isinstance(run.protocols["1"], ByzantineModest) and isinstance(run.protocols["0"], Modest)
    assert len(run.rows) == 8


def test_crashes_mid_run_are_routed_around():
    run = simulate(small(rounds=14), eval_every=1, on_round=crash_at(5, 0.75, nodes=16, seed=0))
    assert len(run.rows) == 14 and run.rows[-1].live == 4


def test_churn_csv_trace(tmp_path):
    path = tmp_path / "churn.csv"
    path.write_text("time,node,event\n0.3,3,crash\n0.2,5,leave\n1.0,5,join\n0.5,15,join\n")
    trace = read_churn_csv(path, nodes=16)
    assert trace["5"] == ((0.2, "leave"), (1.0, "join")) and trace["15"] == ((0.5, "join"),)
    run = simulate(small(rounds=16, protocol_params={"s": 4, "a": 2, "churn": str(path)}), eval_every=4)
    assert len(run.rows) == 16
    newcomer = run.protocols["15"]
    assert isinstance(newcomer, Modest) and newcomer.view.is_member("15") and len(newcomer.view) == 16
    assert run.protocols["0"].view.get("5").counter == 3  # left (2) then joined again (3)


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


def test_bad_protocol_params_are_config_errors():
    with pytest.raises(ConfigError):
        simulate(small(protocol_params={"s": 4, "bogus": 1}))
    with pytest.raises(ConfigError):
        simulate(small(protocol_params={"s": 0}))
    with pytest.raises(ConfigError):
        simulate(small(protocol="el-oracle", protocol_params={"s": 16}))


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
    run = simulate(
        small(
            nodes=40,
            rounds=16,
            lr=0.002,
            local_steps=2,
            protocol_params={"s": 5, "a": 2, "success_fraction": 0.5},
        ),
        eval_every=1,
        on_round=crash_at(6, 0.8, nodes=40, seed=0),
    )
    assert len(run.rows) == 16 and run.rows[-1].live == 8
    assert max(r.acc for r in run.rows[7:]) > run.rows[5].acc

    def final(**changes):
        r = simulate(small(nodes=40, rounds=10, **changes), eval_every=1)
        return r.rows[-1].acc, r.engine.bytes_sent

    params = {"s": 5, "a": 5, "byzantine_roles": "aggregator"}
    attack = {"byzantine_nodes": (0, 1, 2, 3), "attack": "large-value", "attack_params": {"value": 1000.0}}
    clean, modest_bytes = final(protocol_params=params)
    plain, _ = final(protocol_params=params, **attack)
    robust, _ = final(protocol_params={**params, "trainer_combine_rule": "median"}, **attack)
    assert robust >= clean - 0.02 and plain < 0.5
    _, dpsgd_bytes = final(protocol="dpsgd", topology="regular:4", protocol_params={})
    assert dpsgd_bytes > 3 * modest_bytes


def test_sampling_runs_train_with_the_configured_sam_radius():
    # The sampling protocols' trainer takes every optimiser setting of the config, SAM's radius included.
    run = simulate(small(rounds=1, sam_rho=0.05), eval_every=1)
    assert run.worker.trainer.config.sam_rho == 0.05
    plain = simulate(small(rounds=1), eval_every=1)
    assert plain.worker.trainer.config.sam_rho == 0.0
