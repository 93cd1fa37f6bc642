"""The simulator's training worker: a node's batches come from its own shard, as a shard-local sampler draws them."""

from __future__ import annotations

import numpy as np
import torch

from phalanx.node.datasets import load_dataset
from phalanx.node.learner import BatchSampler, TrainConfig, Trainer, derive_seed, flip_labels
from phalanx.node.partition import partition
from phalanx.sim.training import ShardSampler, SimWorker


def test_shard_sampler_draws_the_shard_local_batches_mapped_to_dataset_indices() -> None:
    shard = np.array([40, 7, 13, 99, 5, 61, 2], dtype=np.int64)
    local = BatchSampler(len(shard), 3, seed=11)
    mapped = ShardSampler(len(shard), 3, seed=11, shard=shard)
    for step in range(10):  # several epochs, a short last batch in each
        assert mapped.indices(step).tolist() == shard[local.indices(step)].tolist()


def test_worker_trains_on_the_nodes_own_rows_and_flips_only_flipped_labels() -> None:
    data = load_dataset("blobs")
    shards = partition(data.train_y.numpy(), 4, "iid", seed=0)
    trainer = Trainer("mlp", data, TrainConfig(lr=0.05), init_seed=0)
    worker = SimWorker(trainer, data, shards, seed=3, step_time=0.01, flipped=frozenset({"1"}))
    for node in ("0", "1"):
        i = int(node)
        # What a node training on a copy of its own shard (the real node's Learner) would compute.
        idx = torch.from_numpy(np.asarray(shards[i], dtype=np.int64))
        x, y = data.train_x[idx], data.train_y[idx]
        if node == "1":
            y = flip_labels(y, data.num_classes)
        reference = Trainer("mlp", data, TrainConfig(lr=0.05), init_seed=0)
        state = reference.new_state()
        sampler = BatchSampler(len(idx), reference.config.batch_size, derive_seed(3, "batches", i))
        expected_loss = reference.train(state, x, y, sampler, 3)
        params, loss = worker.train(node, 0, trainer.initial, 3)
        assert loss == expected_loss
        assert torch.equal(params, state.params)
    empty = SimWorker(trainer, data, [np.array([], dtype=np.int64)], seed=0, step_time=0.01)
    params, loss = empty.train("0", 0, trainer.initial, 2)
    assert params is trainer.initial and np.isnan(loss)
