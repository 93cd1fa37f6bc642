"""The runtime on the in-memory transport: D-PSGD rounds, checkpoints, and the runtime's own drops."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
import trio

from phalanx.gossip.dpsgd import DPSGD, DPSGDConfig
from phalanx.gossip.messages import ModelUpdate, encode
from phalanx.gossip.wire import Limits, frame
from phalanx.node import checkpoint as ckpt
from phalanx.node.bans import BanList
from phalanx.node.datasets import make_blobs
from phalanx.node.learner import Learner
from phalanx.node.metrics import Metrics
from phalanx.node.partition import shard_of
from phalanx.node.runtime import NodeRuntime, RuntimeSettings
from phalanx.node.transport import MemoryNetwork


def _learner(n: int, i: int) -> Learner:
    data = make_blobs(n_train=600, n_test=200)
    return Learner(
        dataset=data, shard=shard_of(data.train_y.numpy(), n, i, "iid", seed=0), model="logreg", index=i
    )


def _records(log: io.StringIO, kind: str) -> list[dict]:
    return [r for r in map(json.loads, log.getvalue().splitlines()) if r["event"] == kind]


class LogWatch(io.StringIO):
    """The runtime's log stream, which tests can await instead of polling (written from trio tasks)."""

    def __init__(self) -> None:
        super().__init__()
        self._written = trio.Event()

    def write(self, text: str) -> int:
        self._written.set()
        return super().write(text)

    async def until(self, kind: str, count: int, timeout: float = 10) -> None:
        with trio.fail_after(timeout):
            while len(_records(self, kind)) < count:
                self._written = trio.Event()
                await self._written.wait()


async def test_three_runtimes_on_a_ring_learn_and_checkpoint(tmp_path: Path) -> None:
    n, rounds = 3, 6
    learners = [_learner(n, i) for i in range(n)]
    limits = Limits(dim=learners[0].dim)
    net = MemoryNetwork(limits=limits)
    logs = [io.StringIO() for _ in range(n)]
    async with net.run(), trio.open_nursery() as nursery:
        names = [f"n{i}" for i in range(n)]
        transports = [net.transport(name) for name in names]
        for i in range(n):
            neighbours = (names[(i - 1) % n], names[(i + 1) % n])
            protocol = DPSGD(
                DPSGDConfig(neighbours=neighbours, rounds=rounds, round_timeout=5), learners[i].get_vector()
            )
            runtime = NodeRuntime(
                protocol=protocol,
                transport=transports[i],
                learner=learners[i],
                limits=limits,
                metrics=Metrics(),
                bans=BanList(),
                log=logs[i],
                settings=RuntimeSettings(
                    rounds=rounds, linger=0.2, checkpoint_path=tmp_path / names[i] / "c.bin"
                ),
            )
            nursery.start_soon(runtime.run)
    for i in range(n):
        rows = _records(logs[i], "round")
        assert [r["round"] for r in rows] == list(range(1, rounds + 1))
        assert rows[-1]["accuracy"] > rows[0]["accuracy"]
        saved = ckpt.load(tmp_path / f"n{i}" / "c.bin", dim=learners[i].dim)
        assert saved is not None and saved.round == rounds and saved.steps == rounds


async def test_stale_replayed_and_invalid_messages_are_dropped_and_counted() -> None:
    learner = _learner(2, 0)
    limits = Limits(dim=learner.dim)
    net = MemoryNetwork(limits=limits)
    log = LogWatch()
    metrics = Metrics()
    async with net.run():
        me, peer = net.transport("me"), net.transport("peer")
        protocol = DPSGD(
            # max_ahead: the far-ahead model is kept, not a reason to resynchronise to its round (a jump
            # there, under load before the replay arrives, would make the replay "stale")
            DPSGDConfig(neighbours=("peer",), rounds=0, round_timeout=0.05, max_ahead=10**5),
            learner.get_vector(),
        )
        runtime = NodeRuntime(
            protocol=protocol,
            transport=me,
            learner=learner,
            limits=limits,
            metrics=metrics,
            bans=BanList(threshold=100),
            log=log,
            settings=RuntimeSettings(),
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runtime.run)
            await log.until("round", 3)  # rounds complete on the round timeout, without the peer
            vector = torch.zeros(learner.dim)
            await peer.send("me", encode(ModelUpdate(round=0, params=vector)))  # stale
            await peer.send("me", encode(ModelUpdate(round=10**4, params=vector)))  # accepted (far ahead)
            await peer.send("me", encode(ModelUpdate(round=10**4, params=vector)))  # replay
            await peer.send("me", b"\x92\x01")  # not a map
            # far ahead too (a round the node could reach under load would make it "stale" first)
            await peer.send_raw("me", frame(encode(ModelUpdate(round=10**4 + 1, params=torch.zeros(3)))))
            await log.until("rejected", 4)
            nursery.cancel_scope.cancel()
    assert metrics.rejected == {"stale": 1, "replay": 1, "malformed": 1, "wrong-dimension": 1}
    assert metrics.messages_in == 1
    assert metrics.rounds_completed >= 3
    assert {r["reason"] for r in _records(log, "rejected")} == {
        "stale",
        "replay",
        "malformed",
        "wrong-dimension",
    }


async def test_the_runtime_answers_evaluate_on_the_nodes_own_samples_and_exports_protocol_counters() -> None:
    from tests.gossip.judge import Judge

    learner = _learner(2, 0)
    limits = Limits(dim=learner.dim)
    net = MemoryNetwork(limits=limits)
    metrics = Metrics()
    judge = Judge(learner.get_vector(), samples=30)
    judge.stats = lambda: {"rule_failures": 2.0}  # type: ignore[method-assign]
    async with net.run():
        runtime = NodeRuntime(
            protocol=judge,
            transport=net.transport("me"),
            learner=learner,
            limits=limits,
            metrics=metrics,
            bans=BanList(),
            log=io.StringIO(),
            settings=RuntimeSettings(rounds=1, linger=0.0),
        )
        with trio.fail_after(10):
            await runtime.run()
    (answer,) = judge.answers
    acc, loss, per_class, n = learner.evaluate_local(learner.get_vector(), 30)
    assert (answer.accuracy, answer.loss, answer.samples, answer.per_class) == (acc, loss, 30, per_class)
    assert n == 30
    counters = metrics.status()["protocol_counters"]
    assert {k: v for k, v in counters.items() if not k.startswith("transport_")} == {"rule_failures": 2.0}
    assert 'phalanx_protocol_counter{name="rule_failures"} 2.0' in metrics.prometheus()
