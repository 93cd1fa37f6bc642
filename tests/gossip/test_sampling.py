"""Decentralized sampling: the same view gives the same sample, on every node, in any insertion order."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from phalanx.gossip.membership import View
from phalanx.gossip.sampling import AGGREGATORS, TRAINERS, rank_key, sample

records = st.dictionaries(
    st.text("abcdef0123", min_size=1, max_size=6),
    st.tuples(st.integers(0, 30), st.integers(0, 4)),
    min_size=1,
    max_size=40,
)


def build(owner: str, items: list[tuple[str, tuple[int, int]]]) -> View:
    v = View(owner)
    for p, (r, c) in items:
        v.update(p, r, c, now_round=0)
    return v


@given(records, st.integers(0, 40), st.integers(1, 12), st.integers(0, 40), st.randoms())
def test_same_view_same_sample(recs, k, size, inactivity, rnd):
    items = list(recs.items())
    shuffled = items[:]
    rnd.shuffle(shuffled)
    a, b = build("x", items), build("y", shuffled)
    for role in (TRAINERS, AGGREGATORS):
        got = sample(a, k, size, inactivity=inactivity, role=role)
        assert got == sample(b, k, size, inactivity=inactivity, role=role)
        active = [p for p in sorted(recs) if a.is_active(p, k, inactivity)]
        assert len(got) == min(size, len(active)) and set(got) <= set(active)
        # the sample is the `size` active peers of smallest rank key
        assert got == sorted(active, key=lambda p: rank_key(p, k, role))[:size]


def test_rank_key_is_sha256_of_id_role_and_round():
    assert rank_key("node", 5) == hashlib.sha256(b"node\x00t" + (5).to_bytes(8, "big")).digest()


def test_samples_change_with_the_round_and_spread_over_peers():
    v = View("me", [f"n{i}" for i in range(100)])
    picks = [tuple(sample(v, k, 10, inactivity=1000)) for k in range(200)]
    assert len(set(picks)) == 200
    counts: dict[str, int] = {}
    for pick in picks:
        for p in pick:
            counts[p] = counts.get(p, 0) + 1
    assert len(counts) == 100 and max(counts.values()) < 45  # mean 20: no peer is favoured
