"""Under ``--buffers local`` the simulator evaluates each node's model with that node's own buffers (BatchNorm
running statistics), and the average model with the mean of the honest nodes' buffers."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from phalanx.gossip.events import RoundCompleted
from phalanx.node.datasets import make_blobs
from phalanx.node.learner import TrainConfig, Trainer
from phalanx.sim.experiment import _local_buffers_evaluation
from phalanx.sim.metrics import Metrics
from phalanx.sim.training import SimWorker

SPEC = "tests.node.test_model_state:bn_net"
DATA = make_blobs(n_train=400, n_test=100, features=8, classes=4)


def _trained(policy: str) -> SimWorker:
    # two nodes on different classes: their running statistics differ
    shards = [np.flatnonzero(DATA.train_y.numpy() < 2), np.flatnonzero(DATA.train_y.numpy() >= 2)]
    worker = SimWorker(Trainer(SPEC, DATA, TrainConfig(buffers=policy)), DATA, shards, seed=0, step_time=0.01)
    for node in ("0", "1"):
        worker.train(node, 0, worker.trainer.initial, 4)
    return worker


def test_each_node_is_evaluated_with_its_own_buffers():
    worker = _trained("local")
    trainer = worker.trainer
    evaluate = _local_buffers_evaluation(trainer, worker, ["0", "1"], DATA.test_x, DATA.test_y)
    assert evaluate is not None
    params = worker.state("0").params
    own = trainer.evaluate(params, DATA.test_x, DATA.test_y, buffers=worker.buffers_of("0"))
    other = trainer.evaluate(params, DATA.test_x, DATA.test_y, buffers=worker.buffers_of("1"))
    assert own != other  # the statistics matter, so the choice is visible
    trainer.evaluate(params, DATA.test_x, DATA.test_y, buffers=worker.buffers_of("1"))  # module holds node 1's
    assert evaluate(params, "0") == own
    mean = (worker.buffers_of("0") + worker.buffers_of("1")) / 2
    assert evaluate(params, None) == trainer.evaluate(params, DATA.test_x, DATA.test_y, buffers=mean)


def test_nothing_changes_when_every_buffer_travels():
    worker = _trained("average")
    assert _local_buffers_evaluation(worker.trainer, worker, ["0", "1"], DATA.test_x, DATA.test_y) is None


def test_metrics_ask_for_each_node_by_name_and_for_the_average_without_one():
    asked: list[str | None] = []
    nodes = ["0", "1"]
    metrics = Metrics(
        honest=nodes,
        eval_nodes=frozenset(nodes),
        rounds=1,
        eval_every=1,
        evaluate=lambda p: (0.0, 0.0),
        evaluate_node=lambda p, node: (asked.append(node), (0.5, 1.0))[1],
        start=0.0,
    )
    engine = SimpleNamespace(
        alive=set(nodes), alive_version=0, bytes_sent=0, messages_sent=0, protocols={}, channels={}
    )
    metrics.engine = engine  # type: ignore[assignment]
    for node in nodes:
        metrics.on_round(engine, node, RoundCompleted(round=0, params=torch.ones(3)), 0.0)  # type: ignore[arg-type]
    metrics.finish()
    assert asked == ["0", "1", None]
    assert metrics.rows[0]["acc_mean"] == 0.5
