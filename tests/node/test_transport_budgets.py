"""Per-peer budgets, for both transports: streams, buffered bytes, header and idle timeouts, and banned
peers that are counted rather than reported stream by stream. Each test plays the attacker with
``send_raw`` from one peer while another, honest peer keeps being served."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from phalanx.gossip.wire import FRAME_HEADER, Limits
from phalanx.node.transport import (
    Acquaintances,
    BannedReports,
    Frame,
    GlobalBudget,
    MemoryNetwork,
    PeerBudget,
    Rejected,
    Transport,
    TransportError,
    TransportEvent,
    open_libp2p_transport,
)

LIMITS = Limits.model_only(1000)  # frames of at most 8,096 bytes
BUDGET = PeerBudget(
    max_streams=3, max_buffered=10_000, header_timeout=0.3, idle_timeout=2.0, banned_report_interval=0.3
)
STALL = 5.0


@dataclass
class Trio:
    """An attacker, its victim and an honest peer; ``to_victim`` is the victim's name as the others know it."""

    attacker: Transport
    victim: Transport
    honest: Transport
    to_victim: str
    banned: set[str] = field(default_factory=set)


@pytest.fixture(params=["memory", pytest.param("libp2p", marks=pytest.mark.network)])
async def peers(request: pytest.FixtureRequest) -> AsyncIterator[Trio]:
    banned: set[str] = set()
    if request.param == "memory":
        net = MemoryNetwork(limits=LIMITS, stall=STALL, budget=BUDGET)
        async with net.run():
            victim = net.transport("victim", is_banned=banned.__contains__)
            yield Trio(net.transport("attacker"), victim, net.transport("honest"), "victim", banned)
    else:
        from libp2p.crypto.ed25519 import create_new_key_pair

        async with (
            open_libp2p_transport(create_new_key_pair(), limits=LIMITS) as attacker,
            open_libp2p_transport(
                create_new_key_pair(),
                limits=LIMITS,
                stall=STALL,
                budget=BUDGET,
                is_banned=banned.__contains__,
            ) as victim,
            open_libp2p_transport(create_new_key_pair(), limits=LIMITS) as honest,
        ):
            address = victim.listen_addresses()[0]
            name = attacker.add_address(address)
            honest.add_address(address)
            yield Trio(attacker, victim, honest, name, banned)


async def next_event(t: Transport, kind: type, timeout: float = 10.0) -> TransportEvent:
    with trio.fail_after(timeout):
        while True:
            event = await t.receive()
            if isinstance(event, kind):
                return event


async def next_buffered(t: Transport, n: int) -> None:
    """Wait until ``t`` holds ``n`` bytes of frame bodies being read (a stats poll between scheduler turns)."""
    with trio.fail_after(5):
        while t.stats()["buffered_bytes"] < n:
            await trio.testing.wait_all_tasks_blocked(0.01)


async def honest_frame_arrives(p: Trio) -> None:
    await p.honest.send(p.to_victim, b"honest")
    with trio.fail_after(10):
        while True:
            event = await p.victim.receive()
            if isinstance(event, Frame) and event.peer == p.honest.peer_id:
                assert event.body == b"honest"
                return


async def test_streams_over_the_budget_are_refused_with_a_strike(peers: Trio) -> None:
    p = peers
    for _ in range(BUDGET.max_streams + 2):
        with contextlib.suppress(TransportError):  # the refusal may reach the attacker first
            await p.attacker.send_raw(p.to_victim, b"", close=False)
    for _ in range(2):
        assert await next_event(p.victim, Rejected) == Rejected(p.attacker.peer_id, "too-many-streams")
    await honest_frame_arrives(p)


async def test_a_half_sent_header_is_refused_within_the_header_timeout(peers: Trio) -> None:
    p = peers
    await p.attacker.send_raw(p.to_victim, b"\0\0", close=False)
    event = await next_event(p.victim, Rejected, timeout=BUDGET.header_timeout * 10)
    assert event == Rejected(p.attacker.peer_id, "stalled")
    await honest_frame_arrives(p)


async def test_bytes_over_the_budget_are_refused_before_they_are_read(peers: Trio) -> None:
    p = peers
    nearly_full = FRAME_HEADER.pack(8000) + b"\1" * 100  # then stops: the victim holds 8,000 bytes for it
    await p.attacker.send_raw(p.to_victim, nearly_full, close=False)
    await next_buffered(p.victim, 8000)
    await p.attacker.send_raw(p.to_victim, nearly_full, close=False)
    # refused at once (long before the first stream's stall timeout), and nothing more is charged
    event = await next_event(p.victim, Rejected, timeout=STALL / 2)
    assert event == Rejected(p.attacker.peer_id, "over-budget")
    assert p.victim.stats()["buffered_bytes"] == 8000
    await honest_frame_arrives(p)


async def test_a_banned_peer_is_counted_not_reported_stream_by_stream(peers: Trio) -> None:
    p = peers
    p.banned.add(p.attacker.peer_id)
    streams = 40
    for _ in range(streams):
        with contextlib.suppress(TransportError):  # the refusal may reach the attacker first
            await p.attacker.send_raw(p.to_victim, b"\0\0\0\1x")
    reports: list[Rejected] = []
    while sum(r.count for r in reports) < streams:
        event = await next_event(p.victim, Rejected, timeout=5)
        assert isinstance(event, Rejected) and event.reason == "banned"
        reports.append(event)
    assert len(reports) <= 10, f"{len(reports)} reports for {streams} refused streams"
    assert p.victim.stats()["refused_banned"] == streams
    await honest_frame_arrives(p)


async def test_an_idle_stream_is_reset_and_frees_its_slot(autojump_clock: trio.abc.Clock) -> None:
    net = MemoryNetwork(limits=LIMITS, stall=STALL, budget=BUDGET)
    async with net.run():
        attacker, victim = net.transport("attacker"), net.transport("victim")
        for _ in range(BUDGET.max_streams + 1):
            await attacker.send_raw("victim", b"", close=False)
        assert await next_event(victim, Rejected) == Rejected("attacker", "too-many-streams")
        await trio.sleep(BUDGET.idle_timeout + 0.1)  # virtual time: the idle streams are reset
        assert victim.stats()["inbound_streams"] == 0
        await attacker.send("victim", b"after")
        assert (await next_event(victim, Frame)).body == b"after"  # type: ignore[union-attr]


@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(0, 5)), max_size=60), st.floats(0.1, 2))
def test_banned_reports_lose_nothing_and_say_little(notes: list[tuple[str, float]], interval: float) -> None:
    """Every refused stream is reported exactly once (at once or by a later ``due``), and a peer is
    reported at most once per interval."""
    reports = BannedReports(interval)
    said: list[tuple[str, float, int]] = []
    now = 0.0
    for peer, dt in notes:
        now += dt
        said += [(p, now, n) for p, n in reports.due(now)]
        count = reports.note(peer, now)
        if count:
            said.append((peer, now, count))
    said += [(p, now + 2 * interval, n) for p, n in reports.due(now + 2 * interval)]
    assert sum(n for _, _, n in said) == len(notes) == reports.refused
    for peer in "abc":
        times = [t for p, t, _ in said if p == peer]
        assert all(b - a >= interval for a, b in itertools.pairwise(times))


@pytest.mark.parametrize("kind", ["memory", pytest.param("libp2p", marks=pytest.mark.network)])
async def test_strangers_get_the_smaller_budget(kind: str) -> None:
    """A peer that is neither neighbour nor member gets one stream; a known peer keeps the full budget."""
    known: set[str] = set()
    stranger = PeerBudget(max_streams=1, idle_timeout=BUDGET.idle_timeout)
    async with contextlib.AsyncExitStack() as stack:
        if kind == "memory":
            net = MemoryNetwork(limits=LIMITS, stall=STALL, budget=BUDGET, stranger_budget=stranger)
            await stack.enter_async_context(net.run())
            victim = net.transport("victim", is_known=known.__contains__)
            attacker, honest, name = net.transport("attacker"), net.transport("honest"), "victim"
        else:
            from libp2p.crypto.ed25519 import create_new_key_pair

            victim = await stack.enter_async_context(
                open_libp2p_transport(
                    create_new_key_pair(),
                    limits=LIMITS,
                    budget=BUDGET,
                    stranger_budget=stranger,
                    is_known=known.__contains__,
                )
            )
            attacker = await stack.enter_async_context(
                open_libp2p_transport(create_new_key_pair(), limits=LIMITS)
            )
            honest = await stack.enter_async_context(
                open_libp2p_transport(create_new_key_pair(), limits=LIMITS)
            )
            name = attacker.add_address(victim.listen_addresses()[0])
            honest.add_address(victim.listen_addresses()[0])
        known.add(honest.peer_id)
        for sender in (attacker, honest):
            for _ in range(2):
                with contextlib.suppress(TransportError):
                    await sender.send_raw(name, b"", close=False)
        assert await next_event(victim, Rejected) == Rejected(attacker.peer_id, "too-many-streams")
        await honest.send(name, b"known")  # a third stream of the known peer is still within its budget
        while True:
            event = await next_event(victim, Frame | Rejected)
            assert not isinstance(event, Rejected), event
            if event.peer == honest.peer_id:
                break


async def test_many_fresh_keys_together_hold_no_more_than_the_strangers_pool() -> None:
    """40 strangers each send half a frame and stop: each is within its own budget, but together they hold
    at most the strangers' pool; the rest are reset (no strike: the pool is not theirs alone) before a byte
    of their bodies is taken, and a known peer is still served."""
    known: set[str] = set()
    pool = GlobalBudget(stranger_buffered=3 * 4000)
    net = MemoryNetwork(limits=LIMITS, stall=STALL, budget=BUDGET, stranger_budget=BUDGET, total=pool)
    async with net.run():
        victim = net.transport("victim", is_known=known.__contains__)
        honest = net.transport("honest")
        known.add(honest.peer_id)
        half = FRAME_HEADER.pack(4000) + b"\1" * 100
        for i in range(40):
            with contextlib.suppress(TransportError):
                await net.transport(f"sybil{i}").send_raw("victim", half, close=False)
        await trio.testing.wait_all_tasks_blocked(0.01)
        stats = victim.stats()
        assert stats["buffered_bytes"] == stats["stranger_bytes"] == 3 * 4000
        assert stats["refused_busy"] == 37
        await honest.send("victim", b"known")
        event = await next_event(victim, Frame | Rejected)
        assert event == Frame("honest", b"known")  # no Rejected (strike) for the refused strangers


async def test_a_stranger_over_its_budget_is_refused_before_its_bytes_are_taken() -> None:
    known: set[str] = set()
    stranger = PeerBudget(max_streams=2, max_buffered=1000, idle_timeout=BUDGET.idle_timeout)
    net = MemoryNetwork(limits=LIMITS, stall=STALL, budget=BUDGET, stranger_budget=stranger)
    async with net.run():
        victim = net.transport("victim", is_known=known.__contains__)
        attacker, honest = net.transport("attacker"), net.transport("honest")
        known.add(honest.peer_id)
        announce = FRAME_HEADER.pack(8000) + b"\1" * 100  # within a known peer's budget, not a stranger's
        await attacker.send_raw("victim", announce, close=False)
        assert await next_event(victim, Rejected) == Rejected("attacker", "over-budget")
        assert victim.stats()["buffered_bytes"] == 0
        await honest.send_raw("victim", announce, close=False)  # the same from a known peer is read
        await next_buffered(victim, 8000)


def test_acquaintances_are_the_neighbours_and_the_protocols_current_members() -> None:
    import numpy as np
    import torch

    from phalanx.gossip.modest import Modest, ModestConfig

    known = Acquaintances()
    assert not known("n1")  # until the node meets anyone, everyone is a stranger
    modest = Modest(
        node="me",
        params=torch.zeros(3),
        peers=["me", "n1", "n2"],
        config=ModestConfig(s=2),
        rng=np.random.default_rng(0),
    )
    known.meet(["d1"], modest)
    assert known("d1") and known("n1") and not known("outsider")
    modest.view.update("n2", 0, 2, now_round=0)  # n2 leaves: read at each call, it is a stranger at once
    assert not known("n2")
