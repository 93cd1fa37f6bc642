"""The wire format: round trips (property), and every kind of bad body rejected with a WireError (fuzz)."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from phalanx.gossip.messages import ModelUpdate, decode, encode, encoded_size
from phalanx.gossip.wire import FRAME_HEADER, Limits, WireError, frame, frame_length, pack

DIM = 64
LIMITS = Limits(dim=DIM)

finite = st.floats(allow_nan=False, allow_infinity=False, width=32)
vectors = st.lists(finite, min_size=DIM, max_size=DIM).map(lambda xs: torch.tensor(xs, dtype=torch.float32))


@given(vectors, st.integers(0, 2**48), st.integers(0, 1 << 16))
def test_model_update_round_trips(vector: torch.Tensor, rnd: int, step: int) -> None:
    body = encode(ModelUpdate(round=rnd, params=vector, step=step))
    got = decode(body, LIMITS)
    assert isinstance(got, ModelUpdate)
    assert (got.round, got.step) == (rnd, step)
    assert torch.equal(got.params, vector)
    assert encoded_size(ModelUpdate(round=rnd, params=vector, step=step)) == len(frame(body))
    assert frame_length(frame(body)[:4], LIMITS) == len(body)


def _valid_body() -> bytes:
    return encode(ModelUpdate(round=1, params=torch.ones(DIM)))


@given(st.integers(0, len(_valid_body()) - 1))
def test_truncated_bodies_are_rejected(cut: int) -> None:
    with pytest.raises(WireError):
        decode(_valid_body()[:cut], LIMITS)


@given(st.binary(max_size=2048))
def test_garbage_never_escapes_as_another_error(data: bytes) -> None:
    try:
        decode(data, LIMITS)
    except WireError as exc:
        assert exc.reason in {
            "malformed",
            "version",
            "unknown-type",
            "bad-field",
            "wrong-dimension",
            "non-finite",
        }


@given(st.binary(min_size=1, max_size=256), st.integers(0, len(_valid_body()) - 1))
def test_corrupted_bodies_decode_or_raise_wire_error(noise: bytes, at: int) -> None:
    body = bytearray(_valid_body())
    body[at : at + len(noise)] = noise
    try:
        message = decode(bytes(body), LIMITS)
    except WireError:
        return
    assert isinstance(message, ModelUpdate) and message.params.shape == (DIM,)
    assert torch.isfinite(message.params).all()


@given(st.integers(0, 4 * DIM * 3).filter(lambda n: n != 4 * DIM))
def test_wrong_dimension_is_rejected(nbytes: int) -> None:
    body = pack("model", {"r": 1, "s": 0, "p": b"\0" * nbytes})
    with pytest.raises(WireError) as info:
        decode(body, LIMITS)
    assert info.value.reason == "wrong-dimension"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@given(position=st.integers(0, DIM - 1))
def test_non_finite_values_are_rejected(bad: float, position: int) -> None:
    array = np.ones(DIM, dtype="<f4")
    array[position] = bad
    body = pack("model", {"r": 1, "s": 0, "p": array.tobytes()})
    with pytest.raises(WireError) as info:
        decode(body, LIMITS)
    assert info.value.reason == "non-finite"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (msgpack.packb([1, 2, 3]), "malformed"),
        (msgpack.packb({"v": 2, "t": "model"}), "version"),
        (msgpack.packb({"v": True, "t": "model"}), "version"),
        (msgpack.packb({"v": 1, "t": "nope"}), "unknown-type"),
        (msgpack.packb({"v": 1}), "malformed"),
        (msgpack.packb({"v": 1, "t": "model", "r": -1, "s": 0, "p": b""}), "bad-field"),
        (msgpack.packb({"v": 1, "t": "model", "r": 1.5, "s": 0, "p": b""}), "bad-field"),
        (msgpack.packb({"v": 1, "t": "model", "r": 1, "s": 0, "p": "text"}), "bad-field"),
        (msgpack.packb({"v": 1, "t": "model", "r": 1, "s": 0, "p": msgpack.ExtType(1, b"x")}), "malformed"),
        (msgpack.packb({1: 1}), "malformed"),
        (b"\x91" * 100_000, "malformed"),  # deeply nested arrays
        (_valid_body() + b"\x00", "malformed"),  # trailing bytes
    ],
)
def test_malformed_bodies(body: bytes, reason: str) -> None:
    with pytest.raises(WireError) as info:
        decode(body, LIMITS)
    assert info.value.reason == reason


@given(st.integers(LIMITS.max_frame + 1, 2**32 - 1))
def test_oversized_frame_headers_are_rejected_before_reading(length: int) -> None:
    with pytest.raises(WireError) as info:
        frame_length(FRAME_HEADER.pack(length), LIMITS)
    assert info.value.reason == "frame-too-large"


def test_decoded_vector_is_read_only_view_and_copyable() -> None:
    got = decode(_valid_body(), LIMITS)
    assert isinstance(got, ModelUpdate)
    assert torch.equal(got.params.clone(), torch.ones(DIM))


# dims whose float32 bytes sit on msgpack's bin8/bin16/bin32 boundaries (256 and 65,536 bytes), and others
_DIMS = st.sampled_from([0, 1, 63, 64, 65, 16_383, 16_384, 16_385]) | st.integers(0, 70_000)


@given(
    dim=_DIMS,
    kind=st.sampled_from(["model", "trained", "aggregated"]),
    rnd=st.integers(0, 2**40),
    peers=st.lists(st.text(min_size=1, max_size=12), max_size=20),
)
def test_encoded_size_equals_the_real_encoding(dim: int, kind: str, rnd: int, peers: list[str]) -> None:
    from phalanx.gossip.membership import ViewDelta
    from phalanx.gossip.messages import AggregatedModel, Join, Leave, Ping, Pong, TrainedModel, ViewUpdate

    vector = torch.arange(dim, dtype=torch.float32)
    view = ViewDelta(
        ids=tuple(peers),
        active=tuple(range(len(peers))),
        counters=tuple(2 * i + 1 for i in range(len(peers))),
    )
    message = {
        "model": ModelUpdate(round=rnd, params=vector, step=rnd % 7),
        "trained": TrainedModel(round=rnd, params=vector, view=view),
        "aggregated": AggregatedModel(round=rnd, params=vector, view=view),
    }[kind]
    assert encoded_size(message) == 4 + len(encode(message))
    for small in (
        Ping(round=rnd),
        Pong(round=rnd, has=True),
        Join(counter=1),
        Leave(counter=2),
        ViewUpdate(round=rnd, view=view),
    ):
        assert encoded_size(small) == 4 + len(encode(small))
