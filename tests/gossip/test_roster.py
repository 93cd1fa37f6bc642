"""The node-level membership exchange's sans-I/O half: offers under limits, only owner-signed records merge,
bounded rosters, and the D-PSGD overlay that keeps ``degree`` live neighbours."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from phalanx.gossip.identity import PeerIdKeys, Signer, Verifier, peer_id_for
from phalanx.gossip.membership import ViewDelta
from phalanx.gossip.modest.admission import AdmissionPolicy
from phalanx.gossip.roster import (
    MAX_ADDRS,
    Offer,
    Overlay,
    Roster,
    choose_neighbours,
    decode_offer,
    encode_offer,
    offer_limits,
)
from phalanx.gossip.wire import WireError


def signer(i: int) -> Signer:
    seed = hashlib.sha256(f"roster-test:{i}".encode()).digest()
    probe = Signer.from_seed("x", seed)
    return Signer.from_seed(peer_id_for(probe.public_key()), seed)


def roster(i: int, **kw: object) -> Roster:
    s = signer(i)
    return Roster(s.peer, s, Verifier(PeerIdKeys()), addrs=[f"/ip4/10.0.0.{i}/tcp/4001"], **kw)  # type: ignore[arg-type]


def test_members_spread_through_offers_with_their_addresses() -> None:
    a, b, c = roster(1), roster(2), roster(3)
    limits = offer_limits()
    assert b.receive(a.me, decode_offer(encode_offer(a.offer()), limits)) == [a.me]
    assert set(c.receive(b.me, decode_offer(encode_offer(b.offer()), limits))) == {a.me, b.me}
    assert set(c.members()) == {a.me, b.me}
    assert c.addresses(a.me) == ("/ip4/10.0.0.1/tcp/4001",)
    assert c.is_known(a.me) and not c.is_known(c.me)


def test_a_record_not_signed_by_its_owner_is_refused() -> None:
    a, b, mallory = roster(1), roster(2), roster(9)
    real = a.offer()
    # mallory re-signs a's record with its own key: the signature does not verify for a's peer id
    forged_sig = mallory.view.signer.sign(1, 0)  # type: ignore[union-attr]
    forged = Offer(0, ViewDelta((a.me,), (0,), (1,), (forged_sig,)), (("/ip4/6.6.6.6/tcp/1",),))
    assert b.receive(mallory.me, forged) == []
    assert b.refused == 1 and not b.is_member(a.me)
    # nobody can evict a: a "left" record (counter 2) must be a's own
    b.receive(a.me, real)
    evict = Offer(0, ViewDelta((a.me,), (0,), (2,), (forged_sig,)))
    b.receive(mallory.me, evict)
    assert b.is_member(a.me)
    # a's own leave works
    a.leave()
    b.receive(a.me, a.offer())
    assert not b.is_member(a.me)


def test_third_party_address_hints_never_replace_the_owners() -> None:
    a, b, c = roster(1), roster(2), roster(3)
    c.receive(a.me, a.offer())
    lie = a.offer()
    lie = Offer(lie.round, lie.view, tuple(("/ip4/6.6.6.6/tcp/1",) for _ in lie.view.ids))
    c.receive(b.me, lie)
    assert c.addresses(a.me) == ("/ip4/10.0.0.1/tcp/4001",)


def test_bounds_roster_size_and_introducer_quota() -> None:
    small = roster(0, max_members=3)
    big = roster(50)
    for i in range(1, 10):
        big.receive(roster(i).me, roster(i).offer())
    small.receive(big.me, big.offer())
    assert len(small.view) <= 3
    capped = roster(0, policy=AdmissionPolicy(per_introducer=2))
    capped.receive(big.me, big.offer())
    assert len(capped.members()) == 2 and capped.refused == len(big.members()) + 1 - 2


def test_decode_refuses_unsigned_oversized_and_bad_addresses() -> None:
    limits = offer_limits(4)
    unsigned = Offer(0, ViewDelta(("p",), (0,), (1,)))
    with pytest.raises(WireError):
        decode_offer(encode_offer(unsigned), limits)
    big = roster(50)
    for i in range(1, 8):
        big.receive(roster(i).me, roster(i).offer())
    with pytest.raises(WireError):
        decode_offer(encode_offer(big.offer()), limits)
    one = roster(1).offer()
    bad = Offer(0, one.view, (tuple(f"/ip4/1.1.1.{i}/tcp/1" for i in range(MAX_ADDRS + 1)),))
    with pytest.raises(WireError):
        decode_offer(encode_offer(bad), offer_limits())
    with pytest.raises(WireError):
        decode_offer(b"\x93\x01\x02\x03", limits)


@given(
    n=st.integers(0, 30),
    degree=st.integers(1, 8),
    current=st.sets(st.integers(0, 40), max_size=10),
    seed=st.integers(0, 2**32 - 1),
)
def test_choose_neighbours_keeps_live_members_and_tops_up(
    n: int, degree: int, current: set[int], seed: int
) -> None:
    members = [f"p{i:02d}" for i in range(n)]
    cur = [f"p{i:02d}" for i in current]
    chosen = choose_neighbours(cur, members, degree, np.random.default_rng(seed))
    assert len(set(chosen)) == len(chosen) == min(degree, n)
    assert set(chosen) <= set(members)
    still = [p for p in cur if p in members]
    assert set(sorted(still)[:degree]) <= set(chosen)


def test_overlay_replaces_a_neighbour_that_died_and_keeps_inbound_ones() -> None:
    members = ["a", "b", "c", "d", "e"]
    overlay = Overlay(2, np.random.default_rng(0))
    first = overlay.next((), members, connected=())
    assert len(first) == 2
    # three neighbours (one took this node in) all connected: all stay
    three = ("a", "b", "c")
    assert overlay.next(three, members, connected=three) == three
    # b died (was connected, is no longer): replaced only if under the degree
    assert overlay.next(three, members, connected=("a", "c")) == ("a", "c")
    two = ("a", "b")
    overlay.next(two, members, connected=two)
    after = overlay.next(two, members, connected=("a",))
    assert "b" not in after and "a" in after and len(after) == 2
    assert overlay.replaced >= 2


def test_dpsgd_on_a_changing_overlay_is_not_held_up_by_a_joiner_behind_it() -> None:
    """A node takes in a member that sends it a (late) model; the newcomer does not hold its exchanges up
    until it has caught up, then counts like any neighbour; a neighbour already past the round is excused."""
    import torch

    from phalanx.gossip.dpsgd import DPSGD, DPSGDConfig
    from phalanx.gossip.events import RoundCompleted, Send, TrainingDone
    from phalanx.gossip.messages import ModelUpdate

    node = DPSGD(DPSGDConfig(neighbours=("a",), round_timeout=5.0), torch.zeros(2))
    node.inbound = lambda peer: peer in {"a", "j"}
    node.start(0.0)
    v = torch.ones(2)
    for r in range(3):  # rounds 0..2 with neighbour a
        node.on_training_done(TrainingDone(round=r, params=v), 0.0)
        out = node.on_message("a", ModelUpdate(round=r, params=v), 0.0)
        assert any(isinstance(x, RoundCompleted) for x in out)
    # j joins behind (its round 0): taken in, on probation
    node.on_message("j", ModelUpdate(round=0, params=v), 0.0)
    assert "j" in node.neighbours_at(3)
    sent = node.on_training_done(TrainingDone(round=3, params=v), 0.0)
    assert {x.peer for x in sent if isinstance(x, Send)} == {"a", "j"}
    out = node.on_message("a", ModelUpdate(round=3, params=v), 0.0)
    assert any(isinstance(x, RoundCompleted) for x in out)  # j did not hold round 3 up
    # j caught up: from now on the exchange waits for it
    node.on_message("j", ModelUpdate(round=4, params=v), 0.0)
    node.on_training_done(TrainingDone(round=4, params=v), 0.0)
    out = node.on_message("a", ModelUpdate(round=4, params=v), 0.0)
    assert any(isinstance(x, RoundCompleted) and x.received == 2 for x in out)
    # a neighbour that is already past the round excuses itself: j sends round 6 while this node is in 5
    node.on_training_done(TrainingDone(round=5, params=v), 0.0)
    node.on_message("a", ModelUpdate(round=5, params=v), 0.0)
    out = node.on_message("j", ModelUpdate(round=6, params=v), 0.0)
    assert any(isinstance(x, RoundCompleted) and x.round == 5 for x in out)
    assert node.round == 6 and node.pending() == 1  # j's round-6 model waits for round 6


def test_dpsgd_on_a_changing_overlay_does_not_wait_for_a_neighbour_far_behind() -> None:
    import torch

    from phalanx.gossip.dpsgd import DPSGD, DPSGDConfig
    from phalanx.gossip.events import RoundCompleted, TrainingDone
    from phalanx.gossip.messages import ModelUpdate

    node = DPSGD(DPSGDConfig(neighbours=("a", "b"), round_timeout=5.0, max_ahead=2), torch.zeros(2))
    node.inbound = lambda peer: False
    node.start(0.0)
    v = torch.ones(2)
    node.on_training_done(TrainingDone(round=0, params=v), 0.0)
    node.on_message("b", ModelUpdate(round=0, params=v), 0.0)
    node.on_message("a", ModelUpdate(round=0, params=v), 0.0)
    for r in range(1, 5):  # b went silent after round 0; a keeps up
        node.on_training_done(TrainingDone(round=r, params=v), 0.0)
        out = node.on_message("a", ModelUpdate(round=r, params=v), 0.0)
        done = any(isinstance(x, RoundCompleted) for x in out)
        # b is waited for while within max_ahead rounds behind (round 1 and 2), not beyond
        assert done == (r > 2), r
        if not done:
            node.on_timer(node.timer_name, 5.0)
