"""Runs for the sampling protocols' checks and benchmarks, with a round observer that suits them.

The experiment's metrics write a round out once every live honest node reported it, which suits D-PSGD but
never happens under MoDeST (only the round's ``s`` trainers report it). :func:`simulate` builds the same
pieces (graph, shards, shared trainer, network, engine, ``PROTOCOLS``) and records, per round, when its
first report arrived, the bytes and messages sent by then, and the mean test accuracy of up to
``eval_models`` of the models reported for it — the same measurement for every protocol.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from phalanx.gossip.events import PeerId, RoundCompleted
from phalanx.gossip.protocol import Protocol
from phalanx.node.datasets import load_dataset
from phalanx.node.learner import TrainConfig, Trainer, derive_seed
from phalanx.node.partition import partition
from phalanx.sim.config import SimConfig
from phalanx.sim.engine import Engine
from phalanx.sim.mixing import neighbour_weights
from phalanx.sim.network import network_for
from phalanx.sim.protocols import PROTOCOLS, NodeView
from phalanx.sim.topology import build_graph
from phalanx.sim.training import SimWorker


@dataclass(slots=True)
class RoundRow:
    round: int
    time: float  # virtual seconds at the round's first report
    bytes: int  # bytes sent by every node until then
    messages: int
    reporters: int = 0
    accs: list[float] = field(default_factory=list)
    live: int = 0

    @property
    def acc(self) -> float | None:
        return sum(self.accs) / len(self.accs) if self.accs else None


class RoundLog:
    """Engine observer: per-round first-report time, bytes, and accuracy of a few reported models."""

    def __init__(
        self,
        *,
        evaluate: Callable[[torch.Tensor], float],
        eval_every: int,
        eval_models: int,
        honest: frozenset[PeerId],
        on_round: Callable[[Engine, int], None] | None = None,
    ) -> None:
        self.evaluate = evaluate
        self.eval_every = eval_every
        self.eval_models = eval_models
        self.honest = honest
        self.rows: dict[int, RoundRow] = {}
        self.hook = on_round
        self.eval_seconds = 0.0

    def on_round(self, engine: Engine, node: PeerId, action: RoundCompleted, now: float) -> None:
        if node not in self.honest:
            return
        r = action.round
        row = self.rows.get(r)
        if row is None:
            row = self.rows[r] = RoundRow(
                r, now, engine.bytes_sent, engine.messages_sent, live=len(engine.alive)
            )
            if self.hook is not None:
                self.hook(engine, r)
        row.reporters += 1
        if r % self.eval_every == 0 and len(row.accs) < self.eval_models:
            start = time.perf_counter()
            row.accs.append(self.evaluate(action.params))
            self.eval_seconds += time.perf_counter() - start

    def table(self) -> list[RoundRow]:
        return [self.rows[r] for r in sorted(self.rows)]


@dataclass(slots=True)
class SimRun:
    rows: list[RoundRow]
    engine: Engine
    protocols: dict[PeerId, Protocol]
    worker: SimWorker
    wall: float
    eval_seconds: float
    train_seconds: float
    setup_seconds: float = 0.0  # building data, trainer and every node's protocol
    start_seconds: float = 0.0  # every node's start()
    loop_seconds: float = 0.0  # the event loop: training, evaluation and everything else

    def first_reaching(self, target: float) -> RoundRow | None:
        return next((r for r in self.rows if r.acc is not None and r.acc >= target), None)


class _TimedWorker:
    """Wraps the worker to time training (what the benchmark compares the rest against)."""

    def __init__(self, inner: SimWorker) -> None:
        self.inner = inner
        self.seconds = 0.0

    def duration(self, node: PeerId, steps: int) -> float:
        return self.inner.duration(node, steps)

    def train(self, node: PeerId, round: int, params: torch.Tensor, steps: int) -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        try:
            return self.inner.train(node, round, params, steps)
        finally:
            self.seconds += time.perf_counter() - start


def simulate(
    config: SimConfig,
    *,
    eval_every: int = 5,
    eval_models: int = 3,
    eval_samples: int = 0,
    byzantine: frozenset[int] | None = None,
    on_round: Callable[[Engine, int], None] | None = None,
    wrap: Callable[[PeerId, Protocol], Protocol] | None = None,
) -> SimRun:
    """Run ``config`` (any protocol of ``PROTOCOLS``); ``on_round(engine, r)`` fires when round r first
    reports (fault injection hooks in there). The Byzantine nodes are the experiment's placement unless
    ``byzantine`` is given; they are left out of the measurements."""
    start = time.perf_counter()
    dataset = load_dataset(config.dataset)
    graph = build_graph(config.topology, config.nodes, seed=config.seed)
    weights = neighbour_weights(graph, config.mixing)
    if byzantine is None:
        from phalanx.sim.experiment import place_byzantine

        byzantine = place_byzantine(config, graph, np.random.default_rng(derive_seed(config.seed, "plan")))
    byz = frozenset(str(i) for i in byzantine)
    shards = partition(dataset.train_y.numpy(), config.nodes, config.partition, seed=config.seed)
    trainer = Trainer(config.model, dataset, TrainConfig.from_settings(config), init_seed=config.seed)
    worker = SimWorker(trainer, dataset, shards, seed=config.seed, step_time=config.step_time)
    timed = _TimedWorker(worker)
    peers = tuple(str(i) for i in range(config.nodes))
    protocols: dict[PeerId, Protocol] = {}
    for i in range(config.nodes):
        node = str(i)
        view = NodeView(
            node=node,
            neighbours=tuple(str(j) for j in graph[i]),
            weights={str(j): w for j, w in weights[i].items()},
            peers=peers,
            graph=graph,
            initial=trainer.initial,
            byzantine=byz,
        )
        proto = PROTOCOLS[config.protocol](
            view, config, np.random.default_rng(derive_seed(config.seed, "node", i))
        )
        protocols[node] = wrap(node, proto) if wrap else proto
    test_x, test_y = dataset.test_x, dataset.test_y
    if eval_samples:
        test_x, test_y = test_x[:eval_samples], test_y[:eval_samples]
    log = RoundLog(
        evaluate=lambda p: trainer.evaluate(p, test_x, test_y)[0],
        eval_every=eval_every,
        eval_models=eval_models,
        honest=frozenset(peers) - byz,
        on_round=on_round,
    )
    network = network_for(graph, config)
    engine = Engine(protocols, network=network, worker=timed, observers=(log,))
    begin = time.perf_counter()
    engine.start()
    started = time.perf_counter()
    engine.resume()
    return SimRun(
        setup_seconds=begin - start,
        start_seconds=started - begin,
        loop_seconds=time.perf_counter() - started,
        rows=log.table(),
        engine=engine,
        protocols=protocols,
        worker=worker,
        wall=time.perf_counter() - start,
        eval_seconds=log.eval_seconds,
        train_seconds=timed.seconds,
    )


def crash_at(round_: int, fraction: float, *, nodes: int, seed: int) -> Callable[[Engine, int], None]:
    """An ``on_round`` hook that crashes a random ``fraction`` of the nodes when round ``round_`` starts."""
    rng = np.random.default_rng(derive_seed(seed, "crash-at", round_))
    victims = [str(i) for i in rng.choice(nodes, size=round(fraction * nodes), replace=False)]

    def hook(engine: Engine, r: int) -> None:
        if r == round_:
            for node in victims:
                engine.crash(node)

    return hook


def describe(run: SimRun) -> dict[str, Any]:
    last = run.rows[-1] if run.rows else None
    return {
        "rounds": len(run.rows),
        "bytes": run.engine.bytes_sent,
        "messages": run.engine.messages_sent,
        "virtual_time": run.engine.now,
        "final_acc": last.acc if last else None,
        "wall": run.wall,
    }
