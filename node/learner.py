"""Local training and evaluation on flat float32 parameter vectors.

Every node, simulated or real, trains through this module. A model travels and aggregates as one flat
float32 vector (docs/design.md), so the learner keeps the module's parameters as *views into one flat tensor*
and its gradients as views into another: getting or setting the model is one copy, bit-exact, and SGD
with momentum and weight decay is three vector operations on the flat buffers.

The vector holds the whole model state, not only the parameters: after the parameters come the module's
persistent buffers (BatchNorm running mean and variance, its batch counter) under the default buffer
policy ``average``, so they travel, aggregate and checkpoint with the model. Buffers of any other dtype
(the int64 counter) ride as float32 (exact below 2**24) and are rounded when written back. Under ``local``
they never leave the node: each node keeps its own in :attr:`NodeState.buffers`. The policy is chosen per
buffer kind (``float=average,int=local``); see :func:`parse_buffer_policy`. Parameters must be float32.

Two layers:

- :class:`Trainer` holds one module and its flat buffers and trains *any* node's state through it. A
  simulator with 1,000 nodes shares one Trainer and keeps per-node :class:`NodeState` (a parameter vector,
  a momentum vector and a step counter) — no module per node.
- :class:`Learner` binds a Trainer to one node's data shard and state: what a real node uses.

Batches are drawn without replacement within an epoch from a permutation of the shard that depends only
on (seed, epoch), so the step counter is all the sampler state there is: a checkpointed node resumes
with the same batches, and the same seed gives the same result.

Under ``train_only = "head"`` (:mod:`phalanx.node.transfer`, docs/transfer.md) the vector is the model's head
alone and the rest is frozen; :meth:`Trainer.inputs` turns samples into the frozen part's features once, and
every method takes either.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from phalanx.node.datasets import Dataset
from phalanx.node.models import build_model
from phalanx.node.train_settings import setting
from phalanx.node.transfer import Transfer, linear_heads_per_class


class LearnerError(ValueError):
    """A training setting or vector that cannot be used."""


BUFFER_POLICIES = ("average", "local")
BUFFER_KINDS = ("float", "int")


def parse_buffer_policy(spec: str) -> dict[str, str]:
    """The policy of each buffer kind: ``float`` (running statistics) and ``int`` (counters, masks).

    ``average`` puts the buffers into the model vector after the parameters, so every aggregation rule
    treats them as parameters; ``local`` keeps them on the node (checkpointed, never sent). ``spec`` is one
    policy for both kinds, or ``KIND=POLICY`` pairs separated by commas (``float=average,int=local``;
    an unnamed kind is ``average``).
    """
    if spec in BUFFER_POLICIES:
        return dict.fromkeys(BUFFER_KINDS, spec)
    policy = dict.fromkeys(BUFFER_KINDS, "average")
    for part in spec.split(","):
        kind, eq, value = part.partition("=")
        if not eq or kind.strip() not in BUFFER_KINDS or value.strip() not in BUFFER_POLICIES:
            raise LearnerError(
                f"buffer policy must be average, local or KIND=POLICY pairs (kinds: float, int), got {spec!r}"
            )
        policy[kind.strip()] = value.strip()
    return policy


OPTIMIZERS = ("sgd", "adam", "adamw")
ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, and the papers'
ADAM_EPS = 1e-8
CROSS_ENTROPY = "cross-entropy"


def build_loss(spec: str | Callable[..., Any]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss ``spec`` names: ``cross-entropy``, a ``module:attr`` import path, or a callable.

    A loss is called as ``loss(outputs, labels)`` and returns a scalar tensor (the batch mean). An
    ``nn.Module`` class (``torch.nn:MultiMarginLoss``) is instantiated with no arguments first.
    """
    if isinstance(spec, str):
        if spec == CROSS_ENTROPY:
            return nn.CrossEntropyLoss()
        from phalanx.node.imports import ImportPathError, is_import_path, resolve

        if not is_import_path(spec):
            raise LearnerError(f"unknown loss {spec!r}; use {CROSS_ENTROPY} or a loss as module:attr")
        try:
            obj = resolve(spec)
        except ImportPathError as exc:
            raise LearnerError(str(exc)) from exc
    else:
        obj = spec
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        try:
            obj = obj()
        except Exception as exc:
            raise LearnerError(f"loss {obj.__name__}(): {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    if not callable(obj):
        raise LearnerError(f"loss {spec!r} is a {type(obj).__name__}, not a callable")
    return obj  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainConfig:
    """Local optimiser settings: SGD with momentum, Adam or AdamW, with weight decay, optionally SAM with
    radius ``sam_rho`` around any of them; the training loss (``loss_fn``)."""

    lr: float = setting("lr")  # defaults, bounds and help: phalanx.node.train_settings (shared)
    momentum: float = setting("momentum")
    weight_decay: float = setting("weight_decay")
    batch_size: int = setting("batch_size")
    sam_rho: float = setting("sam_rho")
    buffers: str = setting("buffers")  # the buffer policy (parse_buffer_policy)
    # transfer learning (phalanx.node.transfer): which part trains, and the frozen part's weights file
    train_only: str = setting("train_only")
    features: str = setting("features")
    optimizer: str = setting("optimizer")  # sgd, adam, adamw (Trainer._update)
    loss_fn: str | Callable[..., Any] = setting("loss_fn")  # noqa: RUF009 (build_loss: a name, module:attr, a callable)
    # held-out local evaluation (issue 15): the last eval_holdout samples of a shard (holdout_split)
    eval_holdout: int = setting("eval_holdout")

    def __post_init__(self) -> None:
        parse_buffer_policy(self.buffers)
        if self.optimizer not in OPTIMIZERS:
            raise LearnerError(
                f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}"
            )
        if not self.lr > 0:
            raise LearnerError(f"learning rate must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise LearnerError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise LearnerError(f"weight decay must be >= 0, got {self.weight_decay}")
        if self.batch_size < 1:
            raise LearnerError(f"batch size must be >= 1, got {self.batch_size}")
        if self.sam_rho < 0:
            raise LearnerError(f"SAM radius rho must be >= 0, got {self.sam_rho}")
        if self.train_only not in ("all", "head"):
            raise LearnerError(f"train-only must be all or head, got {self.train_only!r}")
        if self.features and self.train_only != "head":
            raise LearnerError("--features is the frozen part of --train-only head; add --train-only head")
        if self.eval_holdout < 0:
            raise LearnerError(f"eval-holdout must be >= 0, got {self.eval_holdout}")

    @classmethod
    def from_settings(cls, settings: Any) -> TrainConfig:
        """The optimiser settings of anything that holds them under these names (command-line arguments,
        a node's or a simulation's config)."""
        return cls(
            lr=settings.lr,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
            batch_size=settings.batch_size,
            sam_rho=settings.sam_rho,
            buffers=getattr(settings, "buffers", "average"),
            train_only=getattr(settings, "train_only", "all"),
            features=str(getattr(settings, "features", "") or ""),
            optimizer=getattr(settings, "optimizer", "sgd"),
            loss_fn=getattr(settings, "loss_fn", CROSS_ENTROPY),
            eval_holdout=int(getattr(settings, "eval_holdout", 0) or 0),
        )


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of values, stable across processes and Python versions."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def holdout_split(
    shard: np.ndarray, holdout: int, *, seed: int = 0, node: object = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A shard split for ``--eval-holdout``: ``(train, held)``, the indices a node trains on and the
    ``holdout`` it never trains on and answers Evaluate actions on. Both runners (the simulator's workers
    and a real node's :class:`Learner`) split a shard here. The held-out samples are a seeded random draw
    from the shard (a function of ``seed`` and ``node``), in a random order, so any first few of them are
    a random sample too: a shard's own order can be by class (``shards:K``), and its last samples would
    then be one class. The training samples keep the shard's order. ``holdout = 0`` holds nothing out
    (``train`` is the shard as it is). An empty shard (a relay) stays empty; a shard that ``holdout``
    would leave nothing to train on is a :class:`LearnerError`."""
    idx = np.asarray(shard, dtype=np.int64)
    if holdout < 0:
        raise LearnerError(f"eval-holdout must be >= 0, got {holdout}")
    if holdout == 0 or len(idx) == 0:
        return idx, idx[:0]
    if holdout >= len(idx):
        raise LearnerError(
            f"--eval-holdout {holdout} leaves node {node}'s shard of {len(idx)} samples nothing to train "
            f"on; hold out fewer than {len(idx)}"
        )
    picked = np.random.default_rng(derive_seed(seed, "holdout", node)).permutation(len(idx))[:holdout]
    rest = np.ones(len(idx), dtype=bool)
    rest[picked] = False
    return idx[rest], idx[picked]


@dataclass(slots=True)
class NodeState:
    """What one node's training carries from round to round."""

    params: torch.Tensor
    momentum: torch.Tensor
    steps: int = 0
    # the buffers kept local by the buffer policy, as float32 (empty when none are)
    buffers: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    # Adam's second moment (``momentum`` holds its first); empty until an Adam step creates it
    second: torch.Tensor = field(default_factory=lambda: torch.zeros(0))


@dataclass(slots=True)
class BatchSampler:
    """Epoch-wise shuffled batches over ``size`` samples, a pure function of (seed, step)."""

    size: int
    batch_size: int
    seed: int
    _epoch: int = field(default=-1, init=False)
    _perm: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64), init=False)

    def indices(self, step: int) -> np.ndarray:
        per_epoch = max(1, -(-self.size // self.batch_size))
        epoch, pos = divmod(step, per_epoch)
        if epoch != self._epoch:
            self._perm = np.random.default_rng(derive_seed(self.seed, epoch)).permutation(self.size)
            self._epoch = epoch
        return self._perm[pos * self.batch_size : (pos + 1) * self.batch_size]


class Trainer:
    """One model architecture with flat state and gradient buffers; trains and evaluates vectors.

    ``flat`` is the model vector: the parameters (``flat[:num_params]``, the module's parameters are views
    into it) then the buffers the policy averages. ``local`` holds the buffers it keeps local. float32
    buffers are views into these; other dtypes are copied in and out around each use.
    """

    def __init__(
        self,
        model: str | Callable[..., nn.Module],
        dataset: Dataset,
        config: TrainConfig,
        *,
        init_seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        torch.manual_seed(init_seed)
        self.device = torch.device(device)
        # built on the CPU (the same initial weights on every device), then moved
        self.module: nn.Module = build_model(
            model, dataset.feature_shape, dataset.num_classes, seed=derive_seed(init_seed, "dropout")
        ).to(self.device)
        self.model_name = model if isinstance(model, str) else getattr(model, "__qualname__", "model")
        self.config = config
        # With --train-only head, the vector is the head's alone (its parameters and buffers): the rest of
        # the module is frozen (phalanx.node.transfer), and ``inputs`` maps samples to cached features.
        self.transfer: Transfer | None = None
        trainable = self.module
        if config.train_only == "head":
            self.transfer = Transfer(
                self.module, model, features=config.features, input_shape=dataset.feature_shape
            )
            trainable = self.transfer.head
        # What evaluation switches to eval mode and back: the whole module, or only the head when the rest
        # is frozen (it never leaves eval mode), which saves a walk over every submodule per evaluation.
        self._modal: nn.Module = self.module if self.transfer is None else self.transfer.head
        named = list(trainable.named_parameters())
        for name, p in named:
            if p.dtype != torch.float32:
                raise LearnerError(
                    f"parameter {name} is {p.dtype}; phalanx trains float32 models (build the model with "
                    "dtype float32, or call .float() on it in the factory)"
                )
        params = [p for _, p in named]
        self.num_params = sum(p.numel() for p in params)
        policy = parse_buffer_policy(config.buffers)
        persistent = set(trainable.state_dict(keep_vars=True))
        buffers = [(n, b) for n, b in trainable.named_buffers() if n in persistent]
        shared = [
            (n, b) for n, b in buffers if policy["float" if b.is_floating_point() else "int"] == "average"
        ]
        averaged = {n for n, _ in shared}
        kept = [(n, b) for n, b in buffers if n not in averaged]
        self.dim = self.num_params + sum(b.numel() for _, b in shared)
        self.local_dim = sum(b.numel() for _, b in kept)
        self.buffer_names = {"average": [n for n, _ in shared], "local": [n for n, _ in kept]}
        self.flat = torch.zeros(self.dim, dtype=torch.float32, device=self.device)
        self.grad = torch.zeros(self.num_params, dtype=torch.float32, device=self.device)
        self.local = torch.zeros(self.local_dim, dtype=torch.float32, device=self.device)
        # The parameters without the buffers; the very tensor ``flat`` when there are no buffers to carry.
        self.weights = self.flat if self.dim == self.num_params else self.flat[: self.num_params]
        offset = 0
        for p in params:
            n = p.numel()
            self.flat[offset : offset + n].copy_(p.data.reshape(-1))
            p.data = self.flat[offset : offset + n].view_as(p)
            p.grad = self.grad[offset : offset + n].view_as(p)
            offset += n
        # (buffer, its slice of flat or local) for buffers that cannot be views: not float32 or not contiguous
        self._casts: list[tuple[torch.Tensor, torch.Tensor]] = []
        for target, group, offset in ((self.flat, shared, self.num_params), (self.local, kept, 0)):
            for name, b in group:
                n = b.numel()
                view = target[offset : offset + n]
                view.copy_(b.detach().reshape(-1))
                if b.dtype == torch.float32 and b.is_contiguous():
                    owner_name, _, leaf = name.rpartition(".")
                    setattr(trainable.get_submodule(owner_name), leaf, view.view_as(b))
                else:
                    self._casts.append((b, view.view(b.shape)))
                offset += n
        self.has_buffers = bool(buffers)
        self.initial = self.flat.clone()
        self.initial_local = self.local.clone()
        self._loss = build_loss(config.loss_fn)
        # a loss with tensors of its own (class weights) follows the model to its device
        if isinstance(self._loss, nn.Module):
            self._loss.to(self.device)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """What to train and evaluate on for samples ``x``: their features under a cached frozen part
        (computed once here), else ``x`` itself. Every method also takes the samples themselves."""
        return x if self.transfer is None else self.transfer.inputs(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x) if self.transfer is None else self.transfer.forward(x)  # type: ignore[no-any-return]

    def new_state(self) -> NodeState:
        return NodeState(
            params=self.initial.clone(),
            momentum=torch.zeros(self.dim, device=self.device),
            buffers=self.initial_local.clone(),
        )

    def check_vector(self, vector: torch.Tensor) -> None:
        if vector.dtype != torch.float32 or vector.shape != (self.dim,):
            raise LearnerError(
                f"model vector must be float32 of shape ({self.dim},), got {vector.dtype} {tuple(vector.shape)}"
            )

    def load(self, params: torch.Tensor, buffers: torch.Tensor | None = None) -> None:
        """Put a model vector (and local buffers, when given) into the module."""
        self.flat.copy_(params)
        if buffers is not None and self.local_dim:
            self.local.copy_(buffers)
        self._load_casts()

    def _load_casts(self) -> None:
        for b, view in self._casts:
            b.copy_(view.round() if not b.is_floating_point() else view)

    def _save_casts(self) -> None:
        for b, view in self._casts:
            view.copy_(b)

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.grad.zero_()
        loss = self._loss(self._forward(x), y)
        loss.backward()
        return float(loss.detach())

    def step(self, state: NodeState, x: torch.Tensor, y: torch.Tensor) -> float:
        """One SGD step (with SAM when rho > 0) on a batch, updating ``state`` in place; returns the loss."""
        cfg = self.config
        if self.has_buffers:
            self.load(state.params, state.buffers)
        else:
            self.flat.copy_(state.params)
        loss = self._forward_backward(x, y)
        w = self.weights
        if cfg.sam_rho > 0:
            # SAM (Foret et al., 2021): take the gradient at w + rho * g / ||g||, apply it at w. The second
            # pass must not move the running statistics again: they are restored after it.
            kept = None
            if self.has_buffers:
                self._save_casts()
                kept = (self.flat[self.num_params :].clone(), self.local.clone())
            norm = torch.linalg.vector_norm(self.grad)
            eps = self.grad * (cfg.sam_rho / (norm + 1e-12))
            w.add_(eps)
            self._forward_backward(x, y)
            w.sub_(eps)
            if kept is not None:
                self.flat[self.num_params :].copy_(kept[0])
                self.local.copy_(kept[1])
                self._load_casts()
        self._update(state, w, self.grad)
        if self.has_buffers:
            self._save_casts()
            if self.local_dim:
                state.buffers.copy_(self.local)
        state.params.copy_(self.flat)
        state.steps += 1
        return loss

    def _update(self, state: NodeState, w: torch.Tensor, g: torch.Tensor) -> None:
        """Apply gradient ``g`` to weights ``w`` with the configured optimiser; its state lives in ``state``
        (per node: a simulator keeps one NodeState per node, a real node checkpoints it)."""
        cfg = self.config
        n = self.num_params
        m = state.momentum if w is self.flat else state.momentum[:n]
        if cfg.optimizer == "sgd":
            if cfg.weight_decay:
                g = g.add(w, alpha=cfg.weight_decay)
            if cfg.momentum:
                m.mul_(cfg.momentum).add_(g)
                g = m
            w.sub_(g, alpha=cfg.lr)
            return
        # Adam (Kingma & Ba, 2015) and AdamW (Loshchilov & Hutter, 2019), as torch.optim implements them
        if state.second.shape != state.momentum.shape:
            state.second = torch.zeros_like(state.momentum)
        v = state.second if w is self.flat else state.second[:n]
        b1, b2 = ADAM_BETAS
        t = state.steps + 1
        if cfg.weight_decay:
            if cfg.optimizer == "adamw":
                w.mul_(1 - cfg.lr * cfg.weight_decay)
            else:
                g = g.add(w, alpha=cfg.weight_decay)
        m.mul_(b1).add_(g, alpha=1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = v.div(1 - b2**t).sqrt_().add_(ADAM_EPS)
        w.addcdiv_(m, denom, value=-cfg.lr / (1 - b1**t))

    def train(
        self, state: NodeState, x: torch.Tensor, y: torch.Tensor, sampler: BatchSampler, steps: int
    ) -> float:
        """Run ``steps`` local steps on (x, y) with batches from ``sampler``; returns the mean loss."""
        if steps <= 0 or len(x) == 0:
            return float("nan")
        total = 0.0
        for _ in range(steps):
            idx = torch.from_numpy(sampler.indices(state.steps)).to(x.device)
            # index_select: the same rows as x[idx], without advanced indexing's overhead (~18 -> 5 us)
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            if xb.device != self.device:  # data held elsewhere: one batch moves, not the whole set
                xb, yb = xb.to(self.device), yb.to(self.device)
            total += self.step(state, xb, yb)
        return total / steps

    @torch.no_grad()
    def evaluate(
        self,
        params: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        batch: int = 2000,
        buffers: torch.Tensor | None = None,
    ) -> tuple[float, float]:
        """Accuracy in [0, 1] and mean training loss of ``params`` on (x, y); ``buffers``: the local
        buffers to evaluate with (None: those the module holds, the last node's it trained)."""
        self.check_vector(params)
        self.load(params, buffers)
        correct, loss_sum = 0, 0.0
        self._modal.eval()
        for start in range(0, len(x), batch):
            logits = self._forward(x[start : start + batch].to(self.device))
            target = y[start : start + batch].to(self.device)
            loss_sum += float(self._loss(logits, target)) * len(target)  # the training loss, a batch mean
            correct += int((logits.argmax(dim=1) == target).sum())
        self._modal.train()
        n = max(1, len(x))
        return correct / n, loss_sum / n

    @torch.no_grad()
    def evaluate_per_class(
        self,
        params: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        num_classes: int,
        *,
        buffers: torch.Tensor | None = None,
    ) -> tuple[float, float, tuple[float, ...]]:
        """Accuracy, mean loss, and the accuracy on each class's samples (NaN for a class with none)."""
        self.check_vector(params)
        self.load(params, buffers)
        x, y = x.to(self.device), y.to(self.device)
        self._modal.eval()
        try:
            logits = self._forward(x) if len(x) else torch.zeros((0, num_classes), device=self.device)
        finally:
            self._modal.train()
        n = len(x)
        if n == 0:
            return math.nan, math.nan, tuple(math.nan for _ in range(num_classes))
        loss = float(self._loss(logits, y))
        hit = (logits.argmax(dim=1) == y).to(torch.float64)
        counts = torch.bincount(y, minlength=num_classes).to(torch.float64).cpu()
        correct = torch.bincount(y, weights=hit, minlength=num_classes).cpu()
        per_class = tuple(
            float(c / k) if k > 0 else math.nan for c, k in zip(correct.tolist(), counts.tolist())
        )
        return float(hit.mean()), loss, per_class

    @torch.no_grad()
    def evaluate_per_class_many(
        self,
        vectors: list[torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        num_classes: int,
        *,
        buffers: torch.Tensor | None = None,
    ) -> list[tuple[float, float, tuple[float, ...]]]:
        """:meth:`evaluate_per_class` of each vector: in one batched product for linear heads on cached
        features (``--train-only head``, phalanx.node.transfer), else one evaluation after the other."""
        t = self.transfer
        if (
            vectors
            and t is not None
            and t.feature_shape is not None
            and tuple(x.shape[1:]) == t.feature_shape
            and isinstance(t.head, nn.Linear)
            and self.dim == self.num_params
        ):
            for v in vectors:
                self.check_vector(v)
            return linear_heads_per_class(torch.stack(vectors), t.head, x, y, num_classes)
        return [self.evaluate_per_class(v, x, y, num_classes, buffers=buffers) for v in vectors]


def flip_labels(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Label flipping (data poisoning): class c becomes num_classes - 1 - c."""
    return (num_classes - 1) - y


class Learner:
    """One node's learner: a Trainer, the node's data shard, its training state and its batch sampler."""

    def __init__(
        self,
        *,
        dataset: Dataset,
        shard: np.ndarray,
        model: str | Callable[..., nn.Module] = "mlp",
        config: TrainConfig | None = None,
        seed: int = 0,
        index: int = 0,
        flipped: bool = False,
        trainer: Trainer | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.dataset = dataset
        self.trainer = trainer or Trainer(
            model, dataset, config or TrainConfig(), init_seed=seed, device=device
        )
        dev = self.trainer.device
        # with --eval-holdout N the shard is reordered as (trained, held out): the sampler draws only from
        # the first len - N samples, and evaluate_local answers on the last N (holdout_split)
        self.holdout = self.trainer.config.eval_holdout
        train, held = holdout_split(shard, self.holdout, seed=seed, node=index)
        self.train_size = len(train)
        idx = torch.from_numpy(np.concatenate([train, held]))
        self.x = self.trainer.inputs(dataset.train_x[idx].to(dev))
        y = dataset.train_y[idx].to(dev)
        self.y = flip_labels(y, dataset.num_classes) if flipped else y
        # the test set on the device, once (the same tensors on the CPU)
        self.test_x = self.trainer.inputs(dataset.test_x.to(dev))  # as features when cached
        self.test_y = dataset.test_y.to(dev)
        self.state = self.trainer.new_state()
        self.sampler = BatchSampler(
            self.train_size, self.trainer.config.batch_size, derive_seed(seed, "batches", index)
        )

    @property
    def dim(self) -> int:
        return self.trainer.dim

    def get_vector(self) -> torch.Tensor:
        """A copy of the model as one flat float32 vector, on the CPU (where the wire and the protocol
        of a real node work, whatever the training device)."""
        return self.state.params.to("cpu", copy=True)

    def set_vector(self, vector: torch.Tensor) -> None:
        """Replace the model by ``vector`` (exactly; the momentum buffer is kept)."""
        self.trainer.check_vector(vector)
        self.state.params.copy_(vector)

    def train(self, steps: int) -> float:
        return self.trainer.train(self.state, self.x, self.y, self.sampler, steps)

    def evaluate(
        self, params: torch.Tensor | None = None, buffers: torch.Tensor | None = None
    ) -> tuple[float, float]:
        """Test accuracy and loss of this node's model (or of ``params``, with ``buffers`` when given, else
        this node's local buffers)."""
        return self.trainer.evaluate(
            self.state.params if params is None else params,
            self.test_x,
            self.test_y,
            buffers=self.state.buffers if buffers is None else buffers,
        )

    def local_buffers(self) -> dict[str, bytes]:
        """The buffers the policy keeps local, for a checkpoint's ``extra`` (empty when there are none)."""
        if not self.trainer.local_dim:
            return {}
        return {"local_buffers": _raw_f32(self.state.buffers)}

    def restore_local_buffers(self, extra: dict[str, Any]) -> None:
        """Take back the local buffers a checkpoint's ``extra`` holds (see :meth:`local_buffers`)."""
        raw = extra.get("local_buffers")
        if not self.trainer.local_dim:
            return
        if not isinstance(raw, bytes) or len(raw) != 4 * self.trainer.local_dim:
            raise LearnerError(f"checkpoint holds no local buffers of {self.trainer.local_dim} values")
        self.state.buffers.copy_(_from_raw_f32(raw))

    def optimizer_extra(self) -> dict[str, bytes]:
        """Optimiser state beyond the checkpoint's momentum vector (Adam's second moment), for ``extra``."""
        if self.state.second.numel() == 0:
            return {}
        return {"adam_second": _raw_f32(self.state.second)}

    def restore_optimizer_extra(self, extra: dict[str, Any]) -> None:
        """Take back :meth:`optimizer_extra`'s state; a checkpoint without it leaves Adam to start afresh."""
        raw = extra.get("adam_second")
        if raw is None or self.trainer.config.optimizer == "sgd":
            return
        if not isinstance(raw, bytes) or len(raw) != 4 * self.dim:
            raise LearnerError(f"checkpoint's Adam state is not {self.dim} float32 values")
        self.state.second = _from_raw_f32(raw).to(self.trainer.device)

    def checkpoint_extra(self) -> dict[str, str]:
        """What a checkpoint records of the model beyond its vector: the frozen features' sha256 under
        ``--train-only head`` (a head means nothing on other features)."""
        t = self.trainer.transfer
        return {"features_sha256": t.sha256} if t is not None else {}

    def check_checkpoint_extra(self, extra: dict[str, Any], where: str) -> None:
        """Refuse to resume a checkpoint whose head was trained on other frozen features (or none)."""
        mine, theirs = self.checkpoint_extra().get("features_sha256", ""), extra.get("features_sha256", "")
        if mine != theirs:
            raise LearnerError(
                f"checkpoint {where} was trained on frozen features {theirs or 'none'}, this node loads "
                f"{mine or 'none'}; start with --fresh or give the same --train-only/--features"
            )

    def evaluate_local(
        self, params: torch.Tensor, samples: int = 0
    ) -> tuple[float, float, tuple[float, ...], int]:
        """``params`` on this node's own samples: with ``--eval-holdout N``, its held-out samples (the last N
        of its shard, never trained on), else the first of its shard (trained on); at most ``samples`` of
        them (0: all of them)."""
        first = self.train_size if self.holdout else 0  # where the evaluation pool starts in the shard
        pool = len(self.y) - first
        n = pool if samples <= 0 else min(samples, pool)
        acc, loss, per_class = self.trainer.evaluate_per_class(
            params,
            self.x[first : first + n],
            self.y[first : first + n],
            self.dataset.num_classes,
            buffers=self.state.buffers,
        )
        return acc, loss, per_class, n


def _raw_f32(vector: torch.Tensor) -> bytes:
    return vector.detach().cpu().contiguous().numpy().astype("<f4").tobytes()


def _from_raw_f32(raw: bytes) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(raw, dtype="<f4").astype(np.float32))
