"""The seams between a protocol and its two runners (issue: one registry, one pipeline). Each test here
failed on the code before the registry: the run folder of `net up` lied, EL ignored its rule, a rule that
cannot run at one MoDeST node ended the simulation, and MoDeST averaged NaN models in simulation."""

from __future__ import annotations

import math

import pytest

from phalanx.cli import build_parser
from phalanx.net_cmd import sim_config
from phalanx.sim.config import ConfigError, SimConfig
from phalanx.sim.experiment import plan, run


def test_net_up_writes_the_config_of_the_run_that_happened():
    args = build_parser().parse_args(
        [
            "net",
            "up",
            "--protocol",
            "modest",
            "--protocol-param",
            "s=3",
            "--byzantine",
            "1:alie",
            "--byzantine",
            "2:ipm",
            "--kill",
            "3@5",
            "--kill",
            "4@8",
            "--nodes",
            "6",
            "--topology",
            "complete",
        ]
    )
    config = sim_config(args)
    assert config.protocol == "modest" and config.protocol_params == {"s": 3}
    assert config.attacks == {"1": "alie", "2": "ipm"} and config.byzantine_nodes == (1, 2)
    assert config.crash_rounds == {"3": 5, "4": 8}
    assert [config.attack_of(i) for i in (1, 2)] == ["alie", "ipm"]
    assert [config.crash_round_of(i) for i in (3, 4)] == [5, 8]
    checked = plan(config)  # the simulator can replay it
    assert checked.byzantine == frozenset({1, 2}) and checked.crashed == (3, 4)


def el(rule: str, **changes) -> SimConfig:
    values = dict(
        nodes=12,
        rounds=6,
        dataset="blobs",
        protocol="el-oracle",
        protocol_params={"s": 4},
        rule=rule,
        rule_params={"f": 1} if rule == "trimmed-mean" else {},
        eval_every=1,
    )
    values.update(changes)
    return SimConfig(**values)


def test_epidemic_learning_applies_its_rule():
    mean = run(plan(el("mean"))).rows
    trimmed = run(plan(el("trimmed-mean"))).rows
    assert [r["consensus"] for r in mean] != [r["consensus"] for r in trimmed]
    # under a large-value attack the rule is what keeps the honest nodes learning
    attack = dict(byzantine_nodes=(0, 5), attack="large-value", attack_params={"value": 1e4})
    attacked_mean = run(plan(el("mean", **attack))).rows[-1]["acc_mean"]
    attacked_median = run(plan(el("median", **attack))).rows[-1]["acc_mean"]
    assert attacked_median > 0.8 and attacked_mean < 0.5


def test_epidemic_rule_is_validated_against_its_sample_size():
    with pytest.raises(ConfigError, match="krum cannot tolerate f=3 at 2 received el-oracle models"):
        plan(el("krum", protocol_params={"s": 2}, rule_params={"f": 3}))


def test_a_rule_that_cannot_run_at_one_modest_node_never_ends_the_run():
    config = SimConfig(
        nodes=16,
        rounds=10,
        dataset="blobs",
        protocol="modest",
        protocol_params={"s": 4, "a": 3},
        rule="trimmed-mean",
        rule_params={"f": 1},
        byzantine_fraction=0.25,
        attack="sign-flip",
        eval_every=1,
    )
    result = run(plan(config))
    assert [r["round"] for r in result.rows] == list(range(10))
    byzantine = [n for n in result.protocols if int(n) in result.plan.byzantine]
    # the rushing attackers' own rule had one row: it fell back (counted), it did not raise
    failures = sum(result.protocols[n].stats()["rule_failures"] for n in byzantine)
    assert failures > 0


def test_modest_in_the_simulator_drops_non_finite_models_like_the_real_wire():
    config = SimConfig(
        nodes=16,
        rounds=8,
        dataset="blobs",
        protocol="modest",
        protocol_params={"s": 4, "a": 2},
        byzantine_fraction=0.25,
        attack="nan",
        eval_every=1,
    )
    rows = run(plan(config)).rows
    last = rows[-1]
    assert last["acc_mean"] > 0.5 and math.isfinite(last["consensus"])
    assert last["counters"]["rejected_nonfinite"] > 0


def test_a_protocol_without_a_rule_and_a_gossip_rule_at_modest_are_refused():
    with pytest.raises(ConfigError, match="needs the node's own model"):
        plan(
            SimConfig(
                nodes=8, dataset="blobs", protocol="modest", rule="clipped-gossip", rule_params={"tau": 1.0}
            )
        )


def test_an_attack_parameter_the_attack_does_not_take_is_refused_not_silently_dropped():
    """A Byzantine node whose attack fails on an unknown parameter used to send honest models quietly."""
    config = SimConfig(
        nodes=8,
        dataset="blobs",
        topology="ring",
        byzantine_fraction=0.25,
        attack="large-value",
        attack_params={"sigma": 3.0},
    )
    with pytest.raises(ConfigError, match="attack large-value takes no parameter sigma; it takes: value"):
        plan(config)


@pytest.mark.parametrize(
    ("rule", "params", "message"),
    [
        ("clipped-gossip", {}, "missing parameter"),
        ("rfa-gossip", {"iterations": 0}, "iterations must be"),
    ],
)
def test_a_gossip_rule_that_cannot_run_is_refused_before_training(rule, params, message):
    """The trial call went through the Combiner, which counts a failing rule instead of raising: every node
    then silently kept its own model for the whole run."""
    with pytest.raises(ConfigError, match=message):
        plan(SimConfig(nodes=8, topology="ring", dataset="blobs", rule=rule, rule_params=params))
