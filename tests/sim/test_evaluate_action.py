"""The simulator answers a protocol's Evaluate with the model's accuracy on that node's own samples."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np

from phalanx.node.datasets import make_blobs
from phalanx.node.learner import TrainConfig, Trainer
from phalanx.node.partition import partition
from phalanx.sim.engine import Engine
from phalanx.sim.network import Network
from phalanx.sim.training import SimWorker
from tests.gossip.judge import Judge


def test_evaluate_is_answered_with_per_class_accuracy_on_the_nodes_own_shard():
    data = make_blobs(n_train=600, n_test=100)
    trainer = Trainer("logreg", data, TrainConfig(), init_seed=0)
    shards = partition(data.train_y.numpy(), 2, "shards:1", seed=0)  # one class per node
    worker = SimWorker(trainer, data, shards, seed=0, step_time=0.01)
    judges = {str(i): Judge(trainer.initial, samples=40) for i in range(2)}
    graph = nx.path_graph(2)
    Engine(judges, network=Network(graph, latency=0.01, rng=np.random.default_rng(0)), worker=worker).run()
    for node, judge in judges.items():
        (answer,) = judge.answers
        assert answer.tag == "initial" and answer.samples == 40
        held = {int(c) for c in data.train_y[shards[int(node)][:40]].tolist()}
        assert {c for c, acc in enumerate(answer.per_class) if not math.isnan(acc)} == held
        expected, _ = trainer.evaluate(
            trainer.initial, data.train_x[shards[int(node)][:40]], data.train_y[shards[int(node)][:40]]
        )
        assert abs(answer.accuracy - expected) < 1e-9
