"""Local training for every simulated node through one shared :class:`~phalanx.node.learner.Trainer`.

Each node keeps only a :class:`NodeState` (parameters, momentum, step count), its shard's tensors and a
:class:`BatchSampler`; the module and its flat buffers are shared, so 1,000 nodes cost 1,000 parameter
vectors, not 1,000 models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from phalanx.gossip.events import PeerId
from phalanx.node.datasets import Dataset
from phalanx.node.learner import BatchSampler, NodeState, Trainer, derive_seed, flip_labels


class SimWorker:
    """The engine's :class:`~phalanx.sim.engine.Worker`: shared trainer, per-node state and data."""

    def __init__(
        self,
        trainer: Trainer,
        dataset: Dataset,
        shards: Sequence[np.ndarray],
        *,
        seed: int,
        step_time: float,
        slowdown: Mapping[PeerId, float] | None = None,
        flipped: frozenset[PeerId] = frozenset(),
    ) -> None:
        self.trainer = trainer
        self.step_time = step_time
        self.slowdown = dict(slowdown or {})
        self.states: dict[PeerId, NodeState] = {}
        self.data: dict[PeerId, tuple[torch.Tensor, torch.Tensor, BatchSampler]] = {}
        self.steps_run = 0
        for i, shard in enumerate(shards):
            node = str(i)
            idx = torch.from_numpy(np.asarray(shard, dtype=np.int64))
            y = dataset.train_y[idx]
            if node in flipped:
                y = flip_labels(y, dataset.num_classes)
            sampler = BatchSampler(len(idx), trainer.config.batch_size, derive_seed(seed, "batches", i))
            self.data[node] = (dataset.train_x[idx], y, sampler)

    def duration(self, node: PeerId, steps: int) -> float:
        return steps * self.step_time * self.slowdown.get(node, 1.0)

    def state(self, node: PeerId) -> NodeState:
        state = self.states.get(node)
        if state is None:
            # params are replaced by a fresh copy before every training, so the shared initial vector can stand in
            state = self.states[node] = NodeState(
                params=self.trainer.initial, momentum=torch.zeros(self.trainer.dim)
            )
        return state

    def train(self, node: PeerId, round: int, params: torch.Tensor, steps: int) -> tuple[torch.Tensor, float]:
        x, y, sampler = self.data[node]
        if steps == 0 or len(x) == 0:
            return params, float("nan")
        state = self.state(node)
        # Train a fresh copy in place and hand that very tensor back: the protocol owns it from now on
        # (it never writes into it), so the node's state and its next message share one buffer.
        state.params = params.clone()
        loss = self.trainer.train(state, x, y, sampler, steps)
        self.steps_run += steps
        return state.params, loss
