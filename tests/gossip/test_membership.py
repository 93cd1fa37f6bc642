"""Membership views: merge is a join (commutative, associative, idempotent), activity windows, wire form."""

from __future__ import annotations

import msgpack
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from phalanx.gossip.membership import View, ViewDelta
from phalanx.gossip.messages import (
    AggregatedModel,
    Join,
    Leave,
    Ping,
    Pong,
    TrainedModel,
    ViewUpdate,
    decode,
    encode,
)
from phalanx.gossip.wire import Limits, WireError, pack

peer_ids = st.sampled_from([f"p{i}" for i in range(12)])
entries = st.lists(st.tuples(peer_ids, st.integers(0, 50), st.integers(0, 9)), max_size=20)


def view_of(items: list[tuple[str, int, int]]) -> View:
    v = View("me")
    for p, r, c in items:
        v.update(p, r, c, now_round=0)
    return v


def state(v: View) -> dict[str, tuple[int, int]]:
    return {p: (r.last_active, r.counter) for p, r in v.records.items()}


def merged(*parts: list[tuple[str, int, int]]) -> dict[str, tuple[int, int]]:
    v = View("me")
    for part in parts:
        v.merge(view_of(part).delta(), now_round=0)
    return state(v)


@given(entries, entries, entries)
def test_merge_is_commutative_associative_idempotent(a, b, c):
    assert merged(a, b) == merged(b, a)
    assert merged(a, b, c) == merged(c, a, b) == merged(b, c, a)
    assert merged(a, a) == merged(a)


@given(entries, entries)
def test_merge_keeps_the_newest_activity_and_the_highest_counter(a, b):
    result = merged(a, b)
    for p, r, c in a + b:
        assert result[p][0] >= r and result[p][1] >= c


def test_counter_parity_is_membership_and_activity_window():
    v = View("me", ["a", "b"], round=0)
    assert v.is_member("a") and v.is_active("a", 0, inactivity=5)
    v.update("a", 0, 2, now_round=1)  # a left
    assert not v.is_member("a") and "a" not in v.active(1, 5)
    v.touch("b", 3, now_round=3)
    assert v.is_active("b", 8, 5) and not v.is_active("b", 9, 5)
    # a join recorded for a later round takes effect from that round, not before
    v.update("c", 7, 1, now_round=5)
    assert not v.is_active("c", 6, 5) and v.is_active("c", 7, 5)
    assert v.active(7, 5) == ["b", "c"]


def test_delta_holds_only_recent_changes():
    v = View("me", ["a", "b", "c"], round=0)
    v.touch("b", 4, now_round=4)
    assert v.delta(since=3).ids == ("b",)
    assert set(v.delta().ids) == {"a", "b", "c"}


def test_messages_round_trip():
    limits = Limits(dim=4)
    view = ViewDelta(("a", "b"), (3, 4), (1, 2))
    for msg in [
        Ping(round=3, nonce=9),
        Pong(round=3, nonce=9),
        Join(counter=3),
        Leave(counter=2),
        ViewUpdate(round=5, view=view),
    ]:
        assert decode(encode(msg), limits) == msg
    for cls in (TrainedModel, AggregatedModel):
        msg = cls(round=2, params=torch.arange(4, dtype=torch.float32), view=view)
        out = decode(encode(msg), limits)
        assert isinstance(out, cls) and out.view == view and torch.equal(out.params, msg.params)


@pytest.mark.parametrize(
    "fields",
    [
        {"r": 1, "vi": ["a"], "va": [1, 2], "vc": [1]},  # lengths differ
        {"r": 1, "vi": ["a", "a"], "va": [1, 2], "vc": [1, 1]},  # repeated id
        {"r": 1, "vi": [""], "va": [1], "vc": [1]},  # empty id
        {"r": 1, "vi": ["a"], "va": [-1], "vc": [1]},  # negative round
        {"r": 1, "vi": ["a"], "va": [1.5], "vc": [1]},  # not an int
        {"r": 1, "vi": ["a"], "va": [1], "vc": [2**40]},  # counter out of range
        {"r": 1, "vi": "a", "va": [1], "vc": [1]},  # not a list
        {"r": 1, "vi": ["a", "b", "c"], "va": [1, 1, 1], "vc": [1, 1, 1]},  # over max_view
    ],
)
def test_bad_views_are_rejected(fields):
    with pytest.raises(WireError):
        decode(pack("view", fields), Limits(dim=4, max_view=2))


def test_join_and_leave_counters_are_checked():
    with pytest.raises(WireError):
        decode(pack("join", {"c": 2}), Limits(dim=4))
    with pytest.raises(WireError):
        decode(pack("leave", {"c": 3}), Limits(dim=4))
    with pytest.raises(ValueError):
        Join(counter=2)


def test_view_arrays_cannot_exceed_msgpack_limits():
    body = msgpack.packb({"v": 1, "t": "view", "r": 0, "vi": ["a"] * 5, "va": [0] * 5, "vc": [1] * 5})
    with pytest.raises(WireError):
        decode(body, Limits(dim=4, max_view=4))
