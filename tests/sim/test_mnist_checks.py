"""The issue's checks on the embedded MNIST (slow: a few seconds each on one core)."""

from __future__ import annotations

import pytest
import torch

from phalanx.node.datasets import load_dataset
from phalanx.node.learner import Learner, TrainConfig
from phalanx.sim.config import SimConfig
from phalanx.sim.experiment import plan, run

pytestmark = pytest.mark.slow


def centralised_accuracy(steps: int) -> float:
    torch.set_num_threads(1)
    data = load_dataset("mnist")
    learner = Learner(dataset=data, shard=list(range(len(data.train_y))), config=TrainConfig(), seed=0)
    learner.train(steps)
    return learner.evaluate()[0]


def test_dpsgd_reaches_centralised_accuracy_and_consensus_falls() -> None:
    config = SimConfig(
        nodes=16, rounds=40, topology="regular:4", dataset="mnist", local_steps=5, eval_every=10
    )
    rows = run(plan(config)).rows
    central = centralised_accuracy(200)
    assert rows[-1]["acc_mean"] >= central - 0.03, (rows[-1]["acc_mean"], central)
    consensus = [r["consensus"] for r in rows]
    # Models start equal, spread while gradients are large, then gossip pulls them together.
    assert consensus[-1] < 0.75 * max(consensus)
    assert consensus[-1] < consensus[-11]


@pytest.mark.parametrize(("attack", "params"), [("alie", {"z": 100.0}), ("ipm", {"epsilon": 100.0})])
def test_mean_collapses_where_clipping_holds(attack: str, params: dict) -> None:
    base = dict(
        nodes=12,
        rounds=12,
        topology="regular:6",
        dataset="mnist",
        local_steps=5,
        eval_every=12,
        byzantine_fraction=0.25,
        attack=attack,
        attack_params=params,
    )
    mean = run(plan(SimConfig(**base, rule="mean"))).rows[-1]
    clipped = run(plan(SimConfig(**base, rule="clipped-gossip", rule_params={"tau": 1.0}))).rows[-1]
    assert mean["acc_mean"] < 0.5
    assert clipped["acc_min"] > 0.8
