"""Sybil capture (phalanx.sim.sybil): an attacker with fresh keys against one honest node's view."""

from __future__ import annotations

from phalanx.gossip.modest.admission import AdmissionPolicy, pow_ok
from phalanx.sim.sybil import sybil_capture

HONEST = frozenset(f"h{i:03d}" for i in range(100))


def test_an_open_network_gives_fresh_keys_their_share_of_the_samples():
    c = sybil_capture(None, keys=100, rounds=20)
    assert c.admitted == 100 and c.mean > 0.3  # K keys among H honest nodes: about K / (H + K)


def test_the_allow_list_gives_no_capture():
    c = sybil_capture(AdmissionPolicy(allow=HONEST), keys=100, rounds=20)
    assert c.admitted == 0 and c.mean == 0.0 and c.last == 0.0


def test_bounded_growth_caps_admissions_at_rounds_times_the_cap():
    open_ = sybil_capture(None, keys=100, rounds=20)
    capped = sybil_capture(AdmissionPolicy(per_round=1, per_introducer=1), keys=100, rounds=20)
    assert capped.admitted <= 20 and capped.mean < open_.mean / 2


def test_proof_of_work_admits_only_ids_that_carry_it():
    c = sybil_capture(AdmissionPolicy(pow_bits=4), keys=100, rounds=10, seed=1)
    assert c.admitted == sum(pow_ok(f"sybil-1-{i}", 4) for i in range(100)) < 20
