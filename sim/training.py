"""Local training for every simulated node through one shared :class:`~phalanx.node.learner.Trainer`.

Each node keeps only a :class:`NodeState` (parameters, momentum, step count, and the buffers the buffer
policy keeps local, such as BatchNorm statistics under ``local``) and a sampler of its shard's indices;
batches are gathered from the whole training set (no copy of each shard up front), and the module and its
flat buffers are shared, so 1,000 nodes cost 1,000 parameter vectors, not 1,000 models. Under
``--train-only head`` the vectors are heads, and the training set is held as its cached features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from phalanx.gossip.events import PeerId
from phalanx.node.datasets import Dataset
from phalanx.node.learner import BatchSampler, NodeState, Trainer, derive_seed, flip_labels, holdout_split


@dataclass(slots=True)
class ShardSampler(BatchSampler):
    """A node's batches as indices into the whole training set: the batch a :class:`BatchSampler` over the
    shard draws (same seed, same order), mapped through the shard's indices."""

    shard: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    def indices(self, step: int) -> np.ndarray:
        return self.shard[BatchSampler.indices(self, step)]


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
        # Per node: (features, labels, sampler). Features and labels are the whole training set's (labels
        # flipped for label-flipping nodes); the sampler yields the node's batch as indices into them.
        self.data: dict[PeerId, tuple[torch.Tensor, torch.Tensor, ShardSampler]] = {}
        self.steps_run = 0
        self.num_classes = dataset.num_classes
        self.eval_samples = 200  # the default size of a node's local evaluation set (an Evaluate action's)
        # --eval-holdout N: the last N samples of each shard are never trained on and are the evaluation pool
        self.holdout = trainer.config.eval_holdout
        # Per node, the shard indices its Evaluate answers are drawn from (the held-out ones, else the shard)
        self.eval_pool: dict[PeerId, np.ndarray] = {}
        # Per node, its local evaluation set as (samples, labels, n), when its rows are cached features:
        # small (a head's inputs), and gathered once instead of at every Evaluate.
        self._eval_sets: dict[PeerId, tuple[torch.Tensor, torch.Tensor, int]] = {}
        self._keep_eval_sets = trainer.transfer is not None and trainer.transfer.cached
        # the training set on the trainer's device, once: every node's batches are gathered there
        train_y = dataset.train_y.to(trainer.device)
        flipped_y = flip_labels(train_y, dataset.num_classes) if flipped else train_y
        # Under --train-only head with a cacheable frozen part, every sample's features are computed once,
        # here, and all nodes train and evaluate heads on them (phalanx.node.transfer).
        train_x = trainer.inputs(dataset.train_x.to(trainer.device))
        for i, shard in enumerate(shards):
            node = str(i)
            train, held = holdout_split(shard, self.holdout, seed=seed, node=i)
            sampler = ShardSampler(
                len(train), trainer.config.batch_size, derive_seed(seed, "batches", i), shard=train
            )
            self.eval_pool[node] = held if self.holdout else train
            y = flipped_y if node in flipped else train_y
            self.data[node] = (train_x, y, sampler)

    def buffers_of(self, node: PeerId) -> torch.Tensor:
        """The buffers ``node`` keeps local (empty unless the buffer policy keeps some local)."""
        return self.state(node).buffers

    def duration(self, node: PeerId, steps: int) -> float:
        return steps * self.step_time * self.slowdown.get(node, 1.0)

    def state(self, node: PeerId) -> NodeState:
        state = self.states.get(node)
        if state is None:
            # params are replaced by a fresh copy before every training, so the shared initial vector can stand in
            state = self.states[node] = NodeState(
                params=self.trainer.initial,
                momentum=torch.zeros(self.trainer.dim, device=self.trainer.device),
                buffers=self.trainer.initial_local.clone(),
            )
        return state

    def train(self, node: PeerId, round: int, params: torch.Tensor, steps: int) -> tuple[torch.Tensor, float]:
        x, y, sampler = self.data[node]
        if steps == 0 or sampler.size == 0:
            return params, float("nan")
        state = self.state(node)
        # Train a fresh copy in place and hand that very tensor back: the protocol owns it from now on
        # (it never writes into it), so the node's state and its next message share one buffer.
        state.params = params.clone()
        loss = self.trainer.train(state, x, y, sampler, steps)
        self.steps_run += steps
        return state.params, loss

    def evaluate(
        self, node: PeerId, params: torch.Tensor, samples: int
    ) -> tuple[float, float, tuple[float, ...], int]:
        """``params`` on ``node``'s own samples (with the labels it trains on): its held-out samples under
        ``--eval-holdout``, else the first ``samples`` of its shard (see :meth:`_eval_set`)."""
        xs, ys, n = self._eval_set(node, samples)
        acc, loss, per_class = self.trainer.evaluate_per_class(
            params, xs, ys, self.num_classes, buffers=self.state(node).buffers
        )
        return acc, loss, per_class, n

    def evaluate_many(
        self, node: PeerId, vectors: list[torch.Tensor], samples: int
    ) -> list[tuple[float, float, tuple[float, ...], int]]:
        """:meth:`evaluate` of each vector, batched for linear heads on cached features."""
        xs, ys, n = self._eval_set(node, samples)
        results = self.trainer.evaluate_per_class_many(
            vectors, xs, ys, self.num_classes, buffers=self.state(node).buffers
        )
        return [(acc, loss, per_class, n) for acc, loss, per_class in results]

    def _eval_set(self, node: PeerId, samples: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``node``'s local evaluation set: with ``--eval-holdout N``, the first ``samples`` of its N held-out
        samples (0: all N); without, the first ``samples`` of its shard (0: :attr:`eval_samples`)."""
        x, y, _ = self.data[node]
        pool = self.eval_pool[node]
        n = min(samples or (len(pool) if self.holdout else self.eval_samples), len(pool))
        kept = self._eval_sets.get(node)
        if kept is not None and kept[2] == n:
            return kept
        idx = torch.from_numpy(pool[:n]).to(x.device)
        xs, ys = x.index_select(0, idx), y.index_select(0, idx)
        if self._keep_eval_sets:
            self._eval_sets[node] = (xs, ys, n)
        return xs, ys, n
