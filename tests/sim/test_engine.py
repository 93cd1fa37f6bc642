"""The engine runs D-PSGD over a virtual network: accuracy improves, models agree, bytes are counted."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch

from phalanx.gossip.dpsgd import DPSGD, DPSGDConfig
from phalanx.gossip.events import Send
from phalanx.gossip.messages import ModelUpdate, encoded_size
from phalanx.gossip.spec import NodeContext
from phalanx.node.datasets import load_dataset
from phalanx.node.learner import TrainConfig, Trainer
from phalanx.node.partition import partition
from phalanx.sim.config import SimConfig
from phalanx.sim.engine import _TRAINED_READY, Engine
from phalanx.sim.experiment import protocol_of
from phalanx.sim.mixing import neighbour_weights
from phalanx.sim.network import Network
from phalanx.sim.topology import build_graph
from phalanx.sim.training import SimWorker


class Recorder:
    def __init__(self) -> None:
        self.rounds: dict[int, dict[str, torch.Tensor]] = {}

    def on_round(self, engine, node, action, now) -> None:
        self.rounds.setdefault(action.round, {})[node] = action.params


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_ring(
    n: int = 8,
    rounds: int = 15,
    rule: str = "mean",
    loss: float = 0.0,
    observers: tuple = (),
    train_batch: int = 16,
):
    data = load_dataset("blobs")
    config = SimConfig(nodes=n, rounds=rounds, topology="ring", rule=rule, dataset="blobs", local_steps=2)
    trainer = Trainer("mlp", data, TrainConfig(lr=0.05), init_seed=0)
    graph = build_graph("ring", n, seed=0)
    weights = neighbour_weights(graph, "metropolis")
    peers = tuple(str(i) for i in range(n))
    spec, protocol_config = protocol_of(config)
    protocols = {
        str(i): spec.build_node(
            NodeContext(
                node=str(i),
                params=trainer.initial,
                neighbours=tuple(str(j) for j in graph[i]),
                weights={str(j): w for j, w in weights[i].items()},
                peers=peers,
                rng=np.random.default_rng(i),
            ),
            protocol_config,
        )
        for i in range(n)
    }
    shards = partition(data.train_y.numpy(), n, "iid", seed=0)
    worker = SimWorker(trainer, data, shards, seed=0, step_time=0.01)
    recorder = Recorder()
    network = Network(graph, latency=0.01, loss=loss, rng=np.random.default_rng(1))
    engine = Engine(protocols, network=network, worker=worker, observers=(recorder, *observers))
    engine.train_batch = train_batch
    engine.run()
    return engine, recorder, trainer, data


def test_dpsgd_on_a_ring_learns_and_agrees() -> None:
    engine, recorder, trainer, data = run_ring()
    last = recorder.rounds[max(recorder.rounds)]
    assert len(last) == 8

    def acc(models):
        return np.mean([trainer.evaluate(p, data.test_x, data.test_y)[0] for p in models.values()])

    def spread(models):
        stack = torch.stack(list(models.values()))
        return float((stack - stack.mean(0)).norm(dim=1).mean())

    assert acc(trainer_init := {"0": trainer.initial}) < 0.3
    assert acc(last) > 0.9 > acc(trainer_init) + 0.5
    # Models start equal, drift apart while gradients are large, then gossip pulls them together.
    spreads = [spread(recorder.rounds[r]) for r in sorted(recorder.rounds)]
    assert spreads[-1] < 0.5 * max(spreads)
    assert spreads[-1] < spreads[-5]
    # 15 rounds, 8 nodes, 2 messages each per round, every one the same size.
    size = encoded_size(ModelUpdate(round=0, params=trainer.initial))
    assert engine.messages_sent == 15 * 8 * 2
    assert abs(engine.bytes_sent - engine.messages_sent * size) <= engine.messages_sent * 8


def test_message_loss_is_survived_by_timeouts() -> None:
    engine, recorder, _, _ = run_ring(rounds=6, loss=0.3)
    assert set(recorder.rounds) == set(range(6))
    assert all(len(models) == 8 for models in recorder.rounds.values())
    assert engine.network.lost > 0


@pytest.mark.parametrize("seed_run", [0])
def test_same_inputs_same_result(seed_run: int) -> None:
    _, a, _, _ = run_ring(rounds=4, loss=0.2)
    _, b, _, _ = run_ring(rounds=4, loss=0.2)
    for node, params in a.rounds[3].items():
        assert torch.equal(params, b.rounds[3][node])


def test_trainings_due_together_run_back_to_back_and_change_no_result(monkeypatch) -> None:
    log: list[str] = []
    train = SimWorker.train

    def logged(self, node, round, params, steps):
        log.append("train")
        return train(self, node, round, params, steps)

    class Sends:
        def on_send(self, engine, node, peer, message, size, now) -> None:
            log.append("send")

    monkeypatch.setattr(SimWorker, "train", logged)
    _, batched, _, _ = run_ring(rounds=3, loss=0.2, observers=(Sends(),), train_batch=3)
    # 8 ring nodes train at the same instant each round: three trainings, then their six sends, ...
    assert log[:12] == ["train"] * 3 + ["send"] * 6 + ["train"] * 3
    assert log.count("train") == 3 * 8
    log.clear()
    _, one_by_one, _, _ = run_ring(rounds=3, loss=0.2, observers=(Sends(),), train_batch=1)
    assert log[:6] == ["train", "send", "send", "train", "send", "send"]
    for r in range(3):
        assert batched.rounds[r].keys() == one_by_one.rounds[r].keys()
        for node, params in batched.rounds[r].items():
            assert torch.equal(params, one_by_one.rounds[r][node])


def test_a_stop_inside_a_batch_of_trainings_keeps_the_trained_rest_for_later() -> None:
    class StopAtFirstSend:
        engine: Engine | None = None

        def on_send(self, engine, node, peer, message, size, now) -> None:
            if self.engine is None:
                self.engine = engine
                engine.stop()

    stopper = StopAtFirstSend()
    engine, stopped, _, _ = run_ring(rounds=2, observers=(stopper,), train_batch=4)
    ready = sorted(
        entry for entry in engine._heap if entry[2] == _TRAINED_READY
    )  # TrainingDone not handled yet
    assert [entry[3] for entry in ready] == ["1", "2", "3"]  # node 0's was handled; its send stopped the run
    engine._stopped = False
    engine.resume()
    _, whole, _, _ = run_ring(rounds=2, train_batch=4)
    for node, params in whole.rounds[1].items():
        assert torch.equal(params, stopped.rounds[1][node])


def test_messages_reach_an_overridden_handle_as_events_and_others_by_direct_call() -> None:
    from phalanx.gossip.events import MessageReceived

    class OwnHandle(DPSGD):
        def __init__(self) -> None:
            super().__init__(DPSGDConfig(neighbours=("a",), rounds=1), torch.zeros(3))
            self.seen: list[object] = []

        def start(self, now: float) -> list:
            return []

        def handle(self, event, now):  # a protocol that dispatches its own events
            self.seen.append(event)
            return []

    class Plain(DPSGD):
        def __init__(self) -> None:
            super().__init__(DPSGDConfig(neighbours=("a",), rounds=1), torch.zeros(3))
            self.seen: list[object] = []

        def start(self, now: float) -> list:
            return []

        def on_message(self, peer, message, now):
            self.seen.append((peer, message.round, now))
            return []

    class Sender(DPSGD):
        def __init__(self) -> None:
            super().__init__(DPSGDConfig(neighbours=("b", "c"), rounds=1), torch.zeros(3))

        def start(self, now: float) -> list:
            m = ModelUpdate(round=0, params=torch.zeros(3))
            return [Send(peer="b", message=m), Send(peer="c", message=m)]

    graph = nx.Graph([("a", "b"), ("a", "c")])
    b, c = OwnHandle(), Plain()
    network = Network(graph, latency=0.5, rng=np.random.default_rng(0))
    engine = Engine({"a": Sender(), "b": b, "c": c}, network=network, worker=None)  # type: ignore[arg-type]
    engine.run()
    assert len(b.seen) == 1 and isinstance(b.seen[0], MessageReceived) and b.seen[0].peer == "a"
    assert c.seen == [("a", 0, 0.5)]
    assert engine.messages_sent == 2 and engine.bytes_sent == 2 * encoded_size(b.seen[0].message)
    assert engine.events_handled == 2


def test_run_freezes_the_set_up_for_the_collector_and_restores_it() -> None:
    import gc

    assert gc.get_freeze_count() == 0
    run_ring(n=4, rounds=2)
    assert gc.get_freeze_count() == 0  # unfrozen again after the run
    gc.freeze()
    try:
        run_ring(n=4, rounds=2)
        assert gc.get_freeze_count() > 0  # a caller's own freeze is left in place
    finally:
        gc.unfreeze()


def test_network_uses_per_edge_latency_and_bandwidth_only_where_an_edge_sets_them() -> None:

    rng = np.random.default_rng(0)
    plain = Network(nx.path_graph(3), latency=0.1, bandwidth=1000.0, rng=rng)
    assert plain.transit("0", "1", 500) == pytest.approx(0.6)
    assert plain.transit("0", "2", 500) == pytest.approx(0.6)  # not adjacent: the defaults
    assert plain.fixed_delay(500) == plain.transit("1", "2", 500)  # every link alike, nothing lost
    assert Network(nx.path_graph(3), loss=0.1, rng=rng).fixed_delay(500) is None
    graph = nx.path_graph(3)
    graph.edges[0, 1]["latency"] = 2.0
    mixed = Network(graph, latency=0.1, bandwidth=1000.0, rng=rng)
    assert mixed.transit("0", "1", 500) == pytest.approx(2.5)
    assert mixed.transit("1", "2", 500) == pytest.approx(0.6)
    assert mixed.fixed_delay(500) is None
    plain.set_partition([{"0"}])
    assert plain.fixed_delay(500) is None
    assert plain.transit("0", "1", 500) is None and plain.lost == 1
    assert plain.transit("1", "2", 500) == pytest.approx(0.6)


def _star(hub_sends: tuple[str, ...], heard) -> tuple[nx.Graph, dict[str, DPSGD]]:
    """A star with hub "a" and leaves ``hub_sends``: at start the hub sends one message object to the leaves
    in that order; ``heard(node, peer, now)`` sees every delivery."""

    class Node(DPSGD):
        def __init__(self, name: str, peers: tuple[str, ...]) -> None:
            super().__init__(DPSGDConfig(neighbours=peers, rounds=1), torch.zeros(3))
            self.name = name

        def start(self, now: float) -> list:
            if self.name != "a":
                return []
            m = ModelUpdate(round=0, params=torch.zeros(3))
            return [Send(peer=p, message=m) for p in hub_sends]

        def on_message(self, peer, message, now):
            heard(self.name, peer, now)
            return []

    leaves = tuple(sorted(hub_sends))
    nodes = {n: Node(n, leaves if n == "a" else ("a",)) for n in ("a", *leaves)}
    return nx.star_graph(["a", *leaves]), nodes


def test_one_message_to_many_peers_arrives_in_send_order_and_stop_halts_between_receivers() -> None:
    log: list[tuple[str, str, float]] = []
    holder: dict[str, Engine] = {}

    def heard(name: str, peer: str, now: float) -> None:
        log.append((name, peer, now))
        if name == "c":
            holder["engine"].stop()

    graph, nodes = _star(("d", "b", "c", "e"), heard)
    engine = Engine(nodes, network=Network(graph, latency=0.25, rng=np.random.default_rng(0)), worker=None)  # type: ignore[arg-type]
    holder["engine"] = engine
    engine.crash("b")  # a message to a dead node is dropped on arrival
    engine.run()
    assert log == [("d", "a", 0.25), ("c", "a", 0.25)]  # b dead, e never reached: stopped after c
    assert engine.messages_sent == 4 and engine.events_handled == 2
    assert len(engine._heap) == 1  # e's delivery is still pending, not lost


def test_an_event_pushed_between_two_sends_is_handled_between_their_deliveries() -> None:
    log: list[str] = []

    class Tap:
        def on_send(self, engine, node, peer, message, size, now) -> None:
            if peer == "c":  # pushed after b's delivery, before c's: ties break by insertion order
                engine.call_at(now + 0.25, lambda e: log.append("call"))

    graph, nodes = _star(("b", "c"), lambda name, peer, now: log.append(name))
    network = Network(graph, latency=0.25, rng=np.random.default_rng(0))
    engine = Engine(nodes, network=network, worker=None, observers=(Tap(),))  # type: ignore[arg-type]
    engine.run()
    assert log == ["b", "call", "c"]


def test_uplink_queue_serialises_a_senders_messages() -> None:
    """Independent links: every copy takes latency + size / B. A shared uplink: the k-th copy sent at the
    same instant waits for the k - 1 before it; lost copies still occupied the uplink."""
    rng = np.random.default_rng(0)
    free = Network(nx.star_graph(3), latency=0.1, bandwidth=1000.0, rng=rng)
    assert [free.transit("0", str(v), 500, now=2.0) for v in (1, 2, 3)] == pytest.approx([0.6, 0.6, 0.6])
    queued = Network(nx.star_graph(3), latency=0.1, bandwidth=1000.0, uplink=True, rng=rng)
    assert [queued.transit("0", str(v), 500, now=2.0) for v in (1, 2, 3)] == pytest.approx([0.6, 1.1, 1.6])
    # later, after the uplink drained: no wait; another sender has its own uplink
    assert queued.transit("0", "1", 500, now=10.0) == pytest.approx(0.6)
    assert queued.transit("1", "0", 500, now=10.0) == pytest.approx(0.6)
    queued.set_partition([{"0"}])
    assert queued.transit("0", "2", 500, now=20.0) is None
    queued.set_partition(None)
    assert queued.transit("0", "3", 500, now=20.0) == pytest.approx(1.1)  # behind the partitioned copy
    assert queued.fixed_delay(500) is None  # the engine's shared-delay shortcut must not apply
