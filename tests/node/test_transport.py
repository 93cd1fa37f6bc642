"""One test suite for both transports (in-memory and real libp2p on 127.0.0.1)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
import torch
import trio

from phalanx.gossip.messages import ModelUpdate, decode, encode
from phalanx.gossip.wire import FRAME_HEADER, Limits
from phalanx.node.identity import peer_id_of
from phalanx.node.transport import (
    Connected,
    Frame,
    MemoryNetwork,
    Rejected,
    Transport,
    TransportError,
    TransportEvent,
    open_libp2p_transport,
)

DIM = 1000
LIMITS = Limits(dim=DIM)
STALL = 0.5


@pytest.fixture(params=["memory", pytest.param("libp2p", marks=pytest.mark.network)])
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Transport, Transport, str]]:
    """(a, b, b's name as a knows it)."""
    if request.param == "memory":
        net = MemoryNetwork(limits=LIMITS, stall=STALL)
        async with net.run():
            a, b = net.transport("a"), net.transport("b")
            yield a, b, "b"
            await a.aclose()
            await b.aclose()
    else:
        from libp2p.crypto.ed25519 import create_new_key_pair

        async with (
            open_libp2p_transport(create_new_key_pair(), limits=LIMITS, stall=STALL) as a,
            open_libp2p_transport(create_new_key_pair(), limits=LIMITS, stall=STALL) as b,
        ):
            name = a.add_address(b.listen_addresses()[0])
            assert name == b.peer_id
            yield a, b, name


async def next_event(t: Transport, kind: type, timeout: float = 10.0) -> TransportEvent:
    with trio.fail_after(timeout):
        while True:
            event = await t.receive()
            if isinstance(event, kind):
                return event


async def test_model_vector_round_trip(pair: tuple[Transport, Transport, str]) -> None:
    a, b, name = pair
    vector = torch.randn(DIM)
    await a.send(name, encode(ModelUpdate(round=3, params=vector)))
    event = await next_event(b, Frame)
    assert isinstance(event, Frame) and event.peer == a.peer_id
    message = decode(event.body, LIMITS)
    assert message.round == 3 and torch.equal(message.params, vector)
    assert name in a.peers()


async def test_frames_arrive_in_order(pair: tuple[Transport, Transport, str]) -> None:
    a, b, name = pair
    for i in range(5):
        await a.send(name, encode(ModelUpdate(round=i, params=torch.full((DIM,), float(i)))))
    rounds = [decode((await next_event(b, Frame)).body, LIMITS).round for _ in range(5)]  # type: ignore[union-attr]
    assert rounds == list(range(5))


async def test_connected_event(pair: tuple[Transport, Transport, str]) -> None:
    a, b, name = pair
    await a.send(name, b"x")
    event = await next_event(b, Connected)
    assert event.peer == a.peer_id


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (FRAME_HEADER.pack(LIMITS.max_frame + 1) + b"\0" * 64, "frame-too-large"),
        (FRAME_HEADER.pack(0xFFFFFFFF), "frame-too-large"),
        (FRAME_HEADER.pack(0), "empty-frame"),
        (FRAME_HEADER.pack(100) + b"\1" * 10, "truncated"),
        (b"\0\0", "truncated"),
    ],
)
async def test_bad_frames_are_rejected_not_raised(
    pair: tuple[Transport, Transport, str], data: bytes, reason: str
) -> None:
    a, b, name = pair
    await a.send_raw(name, data)
    event = await next_event(b, Rejected)
    assert event == Rejected(a.peer_id, reason)
    # the receiver still works afterwards
    await a.send(name, b"still here")
    assert (await next_event(b, Frame)).body == b"still here"  # type: ignore[union-attr]


async def test_stalled_stream_times_out(pair: tuple[Transport, Transport, str]) -> None:
    a, b, name = pair
    await a.send_raw(name, FRAME_HEADER.pack(100) + b"\1" * 10, close=False)
    event = await next_event(b, Rejected, timeout=STALL * 10)
    assert event == Rejected(a.peer_id, "stalled")


@pytest.mark.network
async def test_banned_peer_is_refused() -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair

    bad_key = create_new_key_pair()
    bad = peer_id_of(bad_key)
    async with (
        open_libp2p_transport(bad_key, limits=LIMITS) as a,
        open_libp2p_transport(create_new_key_pair(), limits=LIMITS, is_banned=lambda p: p == bad) as b,
    ):
        name = a.add_address(b.listen_addresses()[0])
        with contextlib.suppress(TransportError):  # the refusal may reach the sender first
            await a.send(name, b"hello")
        assert await next_event(b, Rejected) == Rejected(bad, "banned")
