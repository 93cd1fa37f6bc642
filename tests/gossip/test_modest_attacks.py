"""An outsider (a fresh key, never a member) and a lying member against MoDeST, sans-I/O: every message
from the network is hostile until verified. Each attack here halted or poisoned a MoDeST network before
membership records were signed and senders checked."""

from __future__ import annotations

import numpy as np
import torch

from phalanx.gossip.events import PenalisePeer, Send, Train
from phalanx.gossip.identity import Signer, sim_keyring
from phalanx.gossip.membership import View, ViewDelta
from phalanx.gossip.messages import AggregatedModel, Join, Leave, Ping, Pong, TrainedModel, ViewUpdate
from phalanx.gossip.modest import Modest, ModestConfig
from phalanx.gossip.sampling import AGGREGATORS, TRAINERS, sample

PEERS = [f"n{i:02d}" for i in range(24)]
SIGNERS, VERIFIER = sim_keyring([*PEERS, "mallory"], seed=0)
MALLORY = SIGNERS["mallory"]  # a valid key of its own, but not a member


def signed_node(name: str = "n00", config: ModestConfig | None = None) -> Modest:
    return Modest(
        node=name,
        params=torch.zeros(3),
        peers=PEERS,
        config=config or ModestConfig(s=4, a=1),
        rng=np.random.default_rng(0),
        signer=SIGNERS[name],
        verifier=VERIFIER,
    )


def penalised(actions) -> bool:
    return any(isinstance(a, PenalisePeer) for a in actions)


def test_an_outsiders_pong_cannot_move_the_round():
    m = signed_node()
    out = m.on_message("mallory", Pong(round=0, nonce=1, latest=2**48), 0.0)
    assert out == [] and m.round == -1 and m.counters["rejected_unsolicited"] == 1


def test_one_lying_member_cannot_move_the_round_but_two_witnesses_can():
    m = signed_node()
    m.on_message("n05", Pong(round=0, nonce=1, latest=2**40), 0.0)
    assert m.round == -1  # one member's word is not enough
    m.on_message("n06", Pong(round=0, nonce=2, latest=7), 0.0)
    assert m.round == 7  # two distinct members vouch for round 7 (not for 2**40)


def test_a_view_update_nobody_asked_for_is_dropped():
    m = signed_node()
    evict = ViewDelta(tuple(PEERS), (0,) * 24, (2**32,) * 24, (MALLORY.sign(2**32, 0),) * 24)
    out = m.on_message("n05", ViewUpdate(round=2**20, view=evict), 0.0)
    assert penalised(out) and m.round == -1
    assert all(m.view.is_member(p) for p in PEERS)


def trainer_of(k: int) -> str:
    return sample(View("observer", PEERS), k, 1, inactivity=1000, role=TRAINERS)[0]


def aggregator_of(k: int) -> str:
    return sample(View("observer", PEERS), k, 1, inactivity=1000, role=AGGREGATORS)[0]


def test_forged_records_in_a_legit_senders_view_cannot_evict_or_add_anyone():
    m = signed_node(aggregator_of(1))
    # evict everyone (even counters) and add 5,000 fake ids, signed by mallory's key, unsigned, or garbage
    evict_ids = tuple(p for p in PEERS if p != m.node)
    fakes = tuple(f"fake{i}" for i in range(5000))
    forged = ViewDelta(
        evict_ids + fakes,
        (0,) * (len(evict_ids) + len(fakes)),
        (2,) * len(evict_ids) + (1,) * len(fakes),
        tuple(MALLORY.sign(2, 0) for _ in evict_ids) + (b"\x00" * 64,) * len(fakes),
    )
    msg = TrainedModel(round=0, params=torch.ones(3), view=forged)
    m.on_message(trainer_of(0), msg, 0.0)
    assert all(m.view.is_member(p) for p in PEERS) and len(m.view) == len(PEERS)
    assert m.view.rejected == len(evict_ids) + len(fakes)
    assert VERIFIER.checked <= len(evict_ids) + len(fakes) + 50  # each distinct record verified once


def test_a_peer_speaks_only_for_itself():
    m = signed_node()
    # mallory signs a Leave and pretends n05 sent it: the signature is not n05's
    forged = Leave(counter=2, round=0, sig=MALLORY.sign(2, 0))
    assert penalised(m.on_message("n05", forged, 0.0)) and m.view.is_member("n05")
    # n05's own, genuine leave is honoured
    genuine = Leave(counter=2, round=0, sig=SIGNERS["n05"].sign(2, 0))
    assert not penalised(m.on_message("n05", genuine, 0.0)) and not m.view.is_member("n05")
    # and an old record cannot resurrect it: only n05 can sign a newer counter
    replayed = Join(counter=1, round=0, sig=SIGNERS["n05"].sign(1, 0))
    m.on_message("n05", replayed, 0.0)
    assert not m.view.is_member("n05")


def test_an_outsiders_aggregated_model_is_refused_and_struck():
    m = signed_node()
    out = m.on_message("mallory", AggregatedModel(round=1, params=torch.full((3,), 99.0)), 0.0)
    assert penalised(out) and not any(isinstance(a, Train) for a in out)
    assert torch.equal(m.model, torch.zeros(3)) and m.counters["rejected_not_sampled"] == 1


def test_a_member_outside_the_rounds_sample_cannot_push_a_model():
    config = ModestConfig(s=4, a=1, sample_slack=2)
    m = signed_node(config=config)
    view = View("observer", PEERS)
    outside = [p for p in PEERS if p not in sample(view, 3, 3, inactivity=1000, role=AGGREGATORS)]
    out = m.on_message(outside[-1], AggregatedModel(round=3, params=torch.ones(3)), 0.0)
    assert penalised(out) and m.started == -1
    out = m.on_message(aggregator_of(3), AggregatedModel(round=3, params=torch.ones(3)), 0.0)
    assert any(isinstance(a, Train) and a.round == 3 for a in out)


def test_pings_from_outsiders_are_answered_but_never_make_them_members():
    m = signed_node()
    out = m.on_message("mallory", Ping(round=0, nonce=3), 0.0)
    assert isinstance(out[0], Send) and not m.view.is_member("mallory") and "mallory" not in m.view


def test_own_records_are_signed_and_verify_elsewhere():
    m = signed_node("n03")
    m.leave(0.0)
    rec = m.view.get("n03")
    assert rec is not None and rec.counter == 2 and VERIFIER.verify("n03", 2, rec.claim, rec.sig)
    other = signed_node("n04")
    assert other.view.accept("n03", rec.counter, rec.claim, rec.sig, now_round=0) is True
    assert not other.view.is_member("n03")


def test_a_signer_signs_only_its_own_peer_id():
    sig = Signer.from_seed("n07", b"\x07" * 32).sign(1, 0)
    assert not VERIFIER.verify("n07", 1, 0, sig)  # not n07's registered key


def join_of(signer: Signer) -> Join:
    return Join(counter=1, round=0, sig=signer.sign(1, 0))


def test_a_validly_signed_outsider_joins_only_where_the_admission_policy_lets_it():
    from phalanx.gossip.modest.admission import AdmissionPolicy

    open_node = signed_node()
    open_node.on_message("mallory", join_of(MALLORY), 0.0)
    assert open_node.view.is_member("mallory")  # a fresh key is enough without a policy (the Sybil risk)
    listed = signed_node(config=ModestConfig(s=4, a=1, admission=AdmissionPolicy(allow=frozenset(PEERS))))
    out = listed.on_message("mallory", join_of(MALLORY), 0.0)
    assert penalised(out) and "mallory" not in listed.view and listed.gate.refused == 1


def test_bounded_growth_caps_newcomers_per_round_and_per_introducer():
    from phalanx.gossip.modest.admission import AdmissionPolicy

    sybils, verifier = sim_keyring([f"sybil{i}" for i in range(10)], seed=3)
    config = ModestConfig(s=4, a=1, admission=AdmissionPolicy(per_round=3, per_introducer=2))
    m = Modest(
        node="n00",
        params=torch.zeros(3),
        peers=PEERS,
        config=config,
        rng=np.random.default_rng(0),
        signer=SIGNERS["n00"],
        verifier=verifier,
    )
    ids = tuple(sorted(sybils))
    delta = ViewDelta(ids, (0,) * 10, (1,) * 10, tuple(sybils[p].sign(1, 0) for p in ids))
    m.view.merge(delta, now_round=0, admit=m._admit("n05"))
    assert sum(p in m.view for p in ids) == 2  # one introducer: 2 newcomers per round
    m.view.merge(delta, now_round=0, admit=m._admit("n06"))
    assert sum(p in m.view for p in ids) == 3  # the round's cap: 3
    m.round = 1
    m.view.merge(delta, now_round=1, admit=m._admit("n06"))
    assert sum(p in m.view for p in ids) == 5  # the next round admits more


def test_proof_of_work_prices_each_fresh_identity():
    from phalanx.gossip.modest.admission import pow_ok

    ids = [f"id{i}" for i in range(4096)]
    passing = [p for p in ids if pow_ok(p, 8)]
    assert 4 <= len(passing) <= 40  # about one id in 2**8
    assert all(pow_ok(p, 0) for p in ids[:10])
