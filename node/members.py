"""The membership exchange over libp2p: how a node that knows one bootstrap address learns the network.

Protocol id **``/phalanx/members/1.0.0``**, one request and one answer per stream: the dialler writes its
offer (:mod:`phalanx.gossip.roster`: its signed membership records with address hints, one length-prefixed
msgpack frame), the listener answers with its own and both merge what they got. Every node serves it,
whatever protocol it runs, so a joiner can learn from a network started with fixed neighbour lists too.

:class:`MemberService` keeps the node's :class:`~phalanx.gossip.roster.Roster` fresh: it exchanges with the
bootstrap peers until one answers, then every ``interval`` seconds with one member drawn at random (push-pull
gossip of the records), and at once with two when a merge taught it a new member (rumour mongering: a
joiner's record and address reach all n members in O(log n) round trips, not intervals). Every address hint of a
verified record goes to the peerstore so the node can dial that member. A bad offer (too large, malformed,
unsigned records) is dropped, counted and reported through ``reject`` (a strike against the sender, like a
bad gossip frame); a banned peer's streams are reset.

Why a stream protocol of our own and not py-libp2p's discovery: Kademlia's ``find_peer`` and rendezvous work
between namespaces (docs/node.md), but they find *addresses of peers one already names*, or of peers
registered under a namespace string anyone may register under; neither says who is a member, and neither
carries a record the member signed. The signed records are what MoDeST's view already trusts, so one
record format serves every protocol, and the exchange costs one round trip of a few kB per interval.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import numpy as np
import trio

from phalanx.gossip.roster import Offer, Roster, decode_offer, encode_offer, offer_limits
from phalanx.gossip.wire import FRAME_HEADER, WireError, frame_length

MEMBERS_PROTOCOL = "/phalanx/members/1.0.0"


def transport_addrs(addrs: list[str]) -> tuple[str, ...]:
    """Announced addresses without their ``/p2p/ID`` suffix (the hint names the peer already)."""
    out = []
    for addr in addrs:
        head, sep, _ = addr.partition("/p2p/")
        out.append(head if sep else addr)
    return tuple(dict.fromkeys(out))


class MemberService:
    """Serves and runs the membership exchange for one node (see the module docstring)."""

    def __init__(
        self,
        roster: Roster,
        host: Any,
        *,
        is_banned: Callable[[str], bool] = lambda peer: False,
        interval: float = 2.0,
        timeout: float = 5.0,
        rng: np.random.Generator | None = None,
        log: TextIO | None = None,
    ) -> None:
        self.roster = roster
        self.host = host
        self.is_banned = is_banned
        self.interval = interval
        self.timeout = timeout
        self.rng = rng or np.random.default_rng()
        self.limits = offer_limits(roster.max_members)
        self._log = log or sys.stdout
        self.changed = trio.Event()  # set when a merge made a peer a member; replaced after each wait
        self.exchanges = 0  # exchanges completed (either side)
        self.failed = 0  # exchanges that did not complete (dial, timeout, bad answer)
        self.reject: Callable[[str, str, str], None] = self._log_reject
        self._first = trio.Event()  # set after the first exchange that completed
        self._news = trio.Event()  # a merge made a peer a member: spread it now, not at the next interval
        self.introduced: set[str] = set()  # neighbours this node swapped records with when it chose them

    # ------------------------------------------------------------------ wiring

    def attach(self) -> None:
        from libp2p.custom_types import TProtocol

        self.host.set_stream_handler(TProtocol(MEMBERS_PROTOCOL), self._handle)

    def _log_reject(self, peer: str, reason: str, detail: str) -> None:
        line = {"event": "rejected", "t": round(time.monotonic(), 3), "peer": peer, "reason": reason}
        print(json.dumps({**line, "detail": detail[:200], "what": "members"}), file=self._log, flush=True)

    # ------------------------------------------------------------------ one exchange

    async def _read_offer(self, stream: Any, peer: str) -> Offer | None:
        async def exactly(n: int) -> bytes:
            from libp2p.network.stream.exceptions import StreamEOF

            data = bytearray()
            while len(data) < n:
                try:
                    chunk = await stream.read(n - len(data))
                except StreamEOF:
                    chunk = b""
                if not chunk:
                    raise WireError("truncated", "the stream ended inside a members frame")
                data += chunk
            return bytes(data)

        try:
            length = frame_length(await exactly(FRAME_HEADER.size), self.limits)
            return decode_offer(await exactly(length), self.limits)
        except WireError as exc:
            self.reject(peer, exc.reason, str(exc))
            return None

    async def _write_offer(self, stream: Any, *, neighbour: bool = False) -> None:
        body = encode_offer(self.roster.offer(rng=self.rng, neighbour=neighbour))
        await stream.write(FRAME_HEADER.pack(len(body)))
        await stream.write(body)

    def _merge(self, peer: str, offer: Offer) -> None:
        import multiaddr
        from libp2p.peer.id import ID

        joined = self.roster.receive(peer, offer)
        store = self.host.get_peerstore()
        for member in (peer, *joined):
            hints = self.roster.addresses(member)
            addrs = []
            for hint in hints:
                try:
                    addrs.append(multiaddr.Multiaddr(hint))
                except Exception:
                    continue  # a hint that is not a multiaddr: ignored (it could never be dialled)
            if addrs and member != self.roster.me:
                try:
                    store.add_addrs(ID.from_base58(member), addrs, 10**9)
                except Exception:
                    continue
        self.exchanges += 1
        self._first.set()
        if joined:
            self._news.set()
            self.changed.set()
            self.changed = trio.Event()

    async def _handle(self, stream: Any) -> None:
        peer = stream.muxed_conn.peer_id.to_base58()
        if self.is_banned(peer):
            await _quietly(stream.reset())
            return
        ok = False
        with trio.move_on_after(self.timeout):
            try:
                offer = await self._read_offer(stream, peer)
                if offer is not None:
                    await self._write_offer(stream)
                    self._merge(peer, offer)
                    ok = True
            except trio.Cancelled:
                raise
            except Exception:  # the stream broke under us
                ok = False
        await _quietly(stream.close() if ok else stream.reset())

    async def exchange(self, peer: str, *, neighbour: bool = False) -> bool:
        """Swap offers with ``peer`` (its address must be in the peerstore); whether it completed.
        ``neighbour``: tell it that this node chose it as a neighbour (it takes this node in)."""
        from libp2p.custom_types import TProtocol
        from libp2p.peer.id import ID

        if self.is_banned(peer):
            return False
        stream = None
        with trio.move_on_after(self.timeout):
            try:
                stream = await self.host.new_stream(ID.from_base58(peer), [TProtocol(MEMBERS_PROTOCOL)])
                await self._write_offer(stream, neighbour=neighbour)
                offer = await self._read_offer(stream, peer)
                if offer is not None:
                    self._merge(peer, offer)
                    await _quietly(stream.close())
                    return True
            except trio.Cancelled:
                raise
            except Exception:  # dial, negotiation, reset: counted as a failed exchange
                pass
        self.failed += 1
        if stream is not None:
            await _quietly(stream.reset())
        return False

    # ------------------------------------------------------------------ the loop

    async def run(self, bootstrap: tuple[str, ...], known: tuple[str, ...] = ()) -> None:
        """Exchange with the bootstrap peers until one answers, then every interval with one peer drawn
        from the members and ``known`` (configured neighbours: a network started from fixed lists learns
        its members' signed records and addresses this way, so it can answer a joiner in full)."""
        while bootstrap and not self._first.is_set():
            for peer in bootstrap:
                if await self.exchange(peer):
                    break
            else:
                for peer in bootstrap:
                    self._forget_failed_dial(peer)
                await trio.sleep(min(self.interval, 1.0))
        seeds = tuple(dict.fromkeys((*known, *bootstrap)))
        first = True
        while True:
            # the first round comes soon: a node started from fixed lists should know its peers' records
            # before anyone joins through it; news (a member learned) goes out at once to two peers
            with trio.move_on_after(self.interval * (0.1 if first else 0.5 + self.rng.random())):
                await self._news.wait()
            first = False
            fanout = 2 if self._news.is_set() else 1
            self._news = trio.Event()
            pool = tuple(dict.fromkeys((*self.roster.members(), *seeds)))
            for i in self.rng.permutation(len(pool))[:fanout]:
                await self.exchange(pool[int(i)])

    def _forget_failed_dial(self, peer: str) -> None:
        """py-libp2p 0.8.1 refuses to dial a peer for 60 s once all its addresses failed (the swarm's
        negative peer cache): a joiner started a moment before its bootstrap node would wait a minute.
        The bootstrap peers are retried every second instead (a private attribute: skipped if it moved)."""
        from libp2p.peer.id import ID

        cache = getattr(self.host.get_network(), "_negative_peer_cache", None)
        if cache is not None:
            with contextlib.suppress(Exception):
                cache.evict(str(ID.from_base58(peer)))

    async def wait_first(self) -> None:
        """Until the first exchange (either side) completed."""
        await self._first.wait()

    async def announce_leave(self, peers: tuple[str, ...]) -> None:
        """Sign a "left" record and hand it to ``peers`` (a node that finished or is stopping)."""
        self.roster.leave()
        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(self.exchange, peer)


async def _quietly(aw: Any) -> None:
    try:
        with trio.move_on_after(2):
            await aw
    except trio.Cancelled:
        raise
    except Exception:
        return
