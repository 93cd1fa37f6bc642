"""Decode bombs: bodies under the frame limit that cost msgpack seconds and gigabytes to build.

Each is refused by the structural scan before msgpack allocates anything; a valid message of any shape the
limits allow still decodes (property), and no body escapes as anything but a WireError.
"""

from __future__ import annotations

import tracemalloc

import msgpack
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from phalanx.gossip.membership import ViewDelta
from phalanx.gossip.messages import ModelUpdate, TrainedModel, decode, encode
from phalanx.gossip.wire import Limits, WireError, check_structure

from .bombs import BOMBS, empty_lists, sized

DIM = 50_890  # the MLP 784-64-10
STRUCTURAL = {"too-many-items", "malformed"}


# A 10,000-entry view keeps the dense bombs' scan (and tracemalloc's overhead on it) short; the default's
# 100,000 is the same code with a bigger budget (see the next test and scripts/red_team.py).
@pytest.mark.parametrize(
    "limits", [Limits(dim=DIM, max_view=10_000), Limits.model_only(DIM)], ids=["view-10k", "model-only"]
)
@pytest.mark.parametrize("name", BOMBS)
def test_bomb_is_refused_before_allocating(name: str, limits: Limits) -> None:
    body = sized(name, limits.max_frame)
    assert len(body) <= limits.max_frame
    tracemalloc.start()
    try:
        with pytest.raises(WireError) as info:
            decode(body, limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.reason in STRUCTURAL
    assert peak < 1 << 20, f"{peak / 1e6:.1f} MB allocated to refuse a {len(body) / 1e6:.1f} MB body"


def test_six_megabytes_of_empty_lists_fit_the_default_frame_but_not_the_scan() -> None:
    body = empty_lists()
    limits = Limits(dim=DIM)
    assert len(body) > 6_000_000 and len(body) <= limits.max_frame  # the attack of issue 13, as measured
    with pytest.raises(WireError, match="too-many-items"):
        check_structure(body, limits)


def test_model_only_limits_leave_room_for_a_model_and_nothing_else() -> None:
    limits = Limits.model_only(DIM)
    assert limits.max_frame == 4 * DIM + 4096 and limits.max_items == 64 and limits.max_view == 0
    message = ModelUpdate(round=7, params=torch.randn(DIM))
    got = decode(encode(message), limits)
    assert isinstance(got, ModelUpdate) and torch.equal(got.params, message.params)
    view = ViewDelta(ids=("a",), active=(1,), counters=(1,))
    with pytest.raises(WireError):
        decode(encode(TrainedModel(round=1, params=torch.zeros(DIM), view=view)), limits)
    assert Limits(dim=DIM).max_frame == 4 * DIM + 160 * 100_000 + 4096  # room for 100,000 signed entries


def test_a_full_view_still_decodes_under_default_limits() -> None:
    limits = Limits(dim=4, max_view=1000)
    ids = tuple(f"12D3KooW{i:044d}" for i in range(1000))
    view = ViewDelta(ids=ids, active=(3,) * 1000, counters=(1,) * 1000)
    got = decode(encode(TrainedModel(round=3, params=torch.zeros(4), view=view)), limits)
    assert isinstance(got, TrainedModel) and got.view.ids == ids


# Any msgpack value with string keys, as a peer could send.
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=300),
    lambda children: (
        st.lists(children, max_size=12) | st.dictionaries(st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=60,
)


def _shape(value: object, depth: int = 0) -> tuple[int, int]:
    """(objects, depth) of a value; depth counts non-empty containers (an empty one is a leaf)."""
    if isinstance(value, list | dict) and not value:
        return 1, depth
    if isinstance(value, list):
        inner = [_shape(v, depth + 1) for v in value]
    elif isinstance(value, dict):
        inner = [_shape(v, depth + 1) for v in value.values()] + [(1, depth + 1)] * len(value)
    else:
        return 1, depth
    return 1 + sum(n for n, _ in inner), max([depth + 1] + [d for _, d in inner])


@given(values, st.integers(1, 6), st.integers(1, 200))
def test_scan_agrees_with_the_value_it_scans(value: object, max_depth: int, max_items: int) -> None:
    body = msgpack.packb(value, use_bin_type=True)
    limits = Limits(dim=4, max_view=100, max_depth=max_depth, max_items=max_items)
    objects, depth = _shape(value)
    too_long = any(isinstance(v, str) and len(v.encode()) > 256 for v in _leaves(value))
    within = objects <= max_items and depth <= max_depth and not too_long
    try:
        check_structure(body, limits)
    except WireError as exc:
        assert not within, f"refused a value within the limits: {exc}"
    else:
        assert within, "accepted a value beyond the limits"


def _leaves(value: object) -> list[object]:
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in [k, *_leaves(v)]]
    return [value]


@given(st.binary(max_size=4096))
def test_any_bytes_scan_or_raise_wire_error(data: bytes) -> None:
    try:
        check_structure(data, Limits(dim=4))
    except WireError as exc:
        assert exc.reason in STRUCTURAL
