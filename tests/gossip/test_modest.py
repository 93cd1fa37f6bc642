"""MoDeST driven by a tiny deterministic runner (training is faked as params + 1, so round k's model is k)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from phalanx.gossip.events import MessageReceived, Send, Train, TrainingDone
from phalanx.gossip.membership import View
from phalanx.gossip.messages import AggregatedModel, Ping, Pong, TrainedModel
from phalanx.gossip.modest import Modest, ModestConfig
from phalanx.gossip.sampling import AGGREGATORS, TRAINERS, sample
from tests.gossip.driver import Driver

PEERS = [f"n{i:02d}" for i in range(24)]


def network(config: ModestConfig, peers=PEERS, **kw) -> dict[str, Modest]:
    return {
        p: Modest(
            node=p, params=torch.zeros(3), peers=peers, config=config, rng=np.random.default_rng(i), **kw
        )
        for i, p in enumerate(peers)
    }


def test_rounds_complete_and_models_flow_from_trainers_to_aggregators():
    d = Driver(network(ModestConfig(s=4, a=2, rounds=12)))
    d.run(100)
    rounds = d.rounds()
    assert sorted(rounds) == list(range(12))
    # round k's outcome is its aggregate, the model round k + 1 trains from (training adds 1: it is k + 1),
    # reported by the trainers of round k + 1 (RoundCompleted means "holds round k's outcome" everywhere)
    for k, models in rounds.items():
        assert len(models) == 4 and all(torch.equal(m, torch.full((3,), float(k + 1))) for m in models)
    view = View("observer", PEERS)  # the initial view: nobody joined or left, so samples never changed
    for k in range(12):
        reporters = {n for _, n, rc in d.completed if rc.round == k}
        assert reporters == set(sample(view, k + 1, 4, inactivity=1000, role=TRAINERS))
    # idle nodes did nothing but answer pings
    busy = {n for _, n, _ in d.completed} | {p for p, _, m in d.sent if not isinstance(m, Pong)}
    for node in set(PEERS) - busy:
        assert all(isinstance(m, Pong) for p, _, m in d.sent if p == node)


def test_trained_models_go_to_the_next_rounds_aggregators():
    d = Driver(network(ModestConfig(s=3, a=2, rounds=4)))
    d.run(100)
    view = View("observer", PEERS)
    for sender, receiver, msg in d.sent:
        if isinstance(msg, TrainedModel):
            assert receiver in sample(view, msg.round + 1, 2, inactivity=1000, role=AGGREGATORS)
            assert sender in sample(view, msg.round, 3, inactivity=1000, role=TRAINERS)


def test_crashed_candidates_are_skipped_and_rounds_keep_completing():
    config = ModestConfig(
        s=4, a=2, rounds=30, ping_timeout=0.2, ping_retry=0.05, aggregation_timeout=1.0, progress_timeout=0.5
    )
    d = Driver(network(config))
    d.run(2.0)
    done_before = max(rc.round for _, _, rc in d.completed)
    dead = set(PEERS[: int(0.8 * len(PEERS))])
    d.alive -= dead
    d.run(200, start=False)
    after = [(rc.round, n) for t, n, rc in d.completed if t > 2.0]
    assert max(r for r, _ in after) == 29 > done_before
    late = [n for r, n in after if r > done_before + 2]
    assert late and not set(late) & dead  # only survivors train once the dead are routed around


def test_success_fraction_and_timeout_let_an_aggregator_proceed():
    config = ModestConfig(s=4, a=1, success_fraction=0.5, aggregation_timeout=0.5, rounds=6)
    d = Driver(network(config))
    d.run(100)
    assert max(d.rounds()) == 5


def aggregator_of(k: int) -> str:
    return sample(View("observer", PEERS), k, 1, inactivity=1000, role=AGGREGATORS)[0]


def test_a_newer_rounds_model_abandons_training():
    node = PEERS[0]
    m = network(ModestConfig(s=4, a=1))[node]
    acts = m.on_message(aggregator_of(3), AggregatedModel(round=3, params=torch.ones(3)), 0.0)
    assert any(isinstance(a, Train) and a.round == 3 for a in acts)
    acts = m.on_message(aggregator_of(5), AggregatedModel(round=5, params=torch.full((3,), 5.0)), 0.1)
    assert any(isinstance(a, Train) and a.round == 5 for a in acts)
    assert m.on_training_done(TrainingDone(round=3, params=torch.ones(3)), 0.2) == []
    older = AggregatedModel(round=4, params=torch.ones(3))
    assert m.on_message(aggregator_of(4), older, 0.3) == []  # older: ignored
    out = m.on_training_done(TrainingDone(round=5, params=torch.ones(3)), 0.4)
    assert any(isinstance(a, Send) and isinstance(a.message, Ping) for a in out) or any(
        isinstance(a, Send) and isinstance(a.message, TrainedModel) for a in out
    )


def test_pings_are_answered_and_left_nodes_go_quiet():
    m = network(ModestConfig())[PEERS[1]]
    assert m.handle(MessageReceived(peer="n02", message=Ping(round=4, nonce=7)), 0.0) == [
        Send(peer="n02", message=Pong(round=4, nonce=7))
    ]
    m.leave(1.0)
    assert m.handle(MessageReceived(peer="n02", message=Ping(round=4, nonce=8)), 1.0) == []


def test_join_takes_effect_for_later_rounds_and_leave_removes_from_samples():
    members = PEERS[:16]
    config = ModestConfig(s=4, a=2, rounds=40, announce=4)
    nodes = network(config, peers=members)
    newcomer = Modest(
        node="zz",
        params=torch.zeros(3),
        peers=members,
        config=config,
        rng=np.random.default_rng(99),
        joining=True,
    )
    nodes["zz"] = newcomer
    d = Driver(nodes)
    d.run(100)
    assert any(n == "zz" for _, n, _ in d.completed), "the newcomer is eventually sampled"
    assert newcomer.view.is_member("zz") and len(newcomer.view) == 17
    # a leaver is never trained after its leave spread
    nodes = network(config, peers=members)
    d = Driver(nodes)
    d.run(1.0)
    leaver = next(n for n in members if n not in {x for _, x, _ in d.completed})
    d.call(leaver, nodes[leaver].leave)
    d.run(100, start=False)
    late = [(rc.round, n) for t, n, rc in d.completed if t > 3.0]
    assert late and leaver not in {n for _, n in late}


@pytest.mark.parametrize("robust", [False, True])
def test_byzantine_aggregators_poison_plain_modest_but_not_the_robust_variant(robust):
    view = View("observer", PEERS)
    # f_a = 2 of the a = 5 aggregators of every round are Byzantine: the first two of its sample
    byzantine = {k: set(sample(view, k, 5, inactivity=1000, role=AGGREGATORS)[:2]) for k in range(30)}

    def tamper(sender, msg):
        if isinstance(msg, AggregatedModel) and sender in byzantine[msg.round]:
            return replace(msg, params=torch.full((3,), -100.0))
        return msg

    config = ModestConfig(s=4, a=5, rounds=25, trainer_combine_rule="median" if robust else None)
    d = Driver(network(config), tamper=tamper, latency=0.01)
    d.run(200)
    honest_rounds = [(rc.round, rc.params) for _, n, rc in d.completed]
    poisoned = [k for k, p in honest_rounds if float(p[0]) < 0]
    if robust:
        assert max(d.rounds()) == 24
        assert not poisoned and all(torch.equal(p, torch.full((3,), float(k + 1))) for k, p in honest_rounds)
    else:
        assert poisoned
