"""Transports: framed byte messages between peers, with a libp2p implementation and an in-memory one.

The interface is small (docs/design.md): ``send(peer, body)``, ``receive() -> TransportEvent``,
``peers()`` and ``aclose()``, plus ``send_raw`` for tests that play a misbehaving peer. Both
implementations frame bodies with :func:`phalanx.gossip.wire.frame` and read them back with the same
:func:`read_frames` loop, which enforces the frame limit *before* reading a body and times out streams that
stall. A frame-level problem ends that stream and comes out of ``receive()`` as :class:`Rejected`; the
transport never raises because of a peer's bytes.

Every peer has a :class:`PeerBudget`, enforced alike by both implementations: concurrent inbound streams,
body bytes being read (charged when a header announces them, before any of it is read), a timeout for a
started header and one for an idle stream. Going over a budget resets that stream and is a
:class:`Rejected` with a stable reason (``too-many-streams``, ``over-budget``, ``stalled``), which the
runtime counts as a strike. Streams of a banned peer are refused at once and reported as one
``Rejected(peer, "banned", count=n)`` per peer and interval, not one event (one log line) per stream.

libp2p: TCP + Noise + yamux (py-libp2p defaults). Each sender keeps one long-lived stream per peer on
:data:`PROTOCOL_ID` and writes frames into it; a failed write drops the stream and retries once on a new
one (the peer may have restarted).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio
import trio.testing

from phalanx.gossip.wire import FRAME_HEADER, Limits, WireError, frame, frame_length

PROTOCOL_ID = "/phalanx/gossip/1.0.0"
STALL_TIMEOUT = 10.0  # seconds without progress inside a frame before the stream is dropped
MIN_RATE = 1_000_000  # bytes/s: a frame of n bytes must arrive within STALL_TIMEOUT + n / MIN_RATE
SEND_TIMEOUT = 30.0
FRAME_SLOTS = 16  # received frames waiting for receive(): bounds memory, applies back-pressure
IDLE_TIMEOUT = 60.0  # seconds an inbound stream may sit between frames before it is reset (no strike)
MAX_STREAMS = 8  # concurrent inbound streams per peer (an honest sender keeps one)
BANNED_REPORT_INTERVAL = 10.0  # seconds between two reports of one banned peer's refused streams


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerBudget:
    """What one peer may hold of this node's resources at any moment.

    ``max_buffered`` is the body bytes of one peer's frames being read (all its streams together); 0 means
    two frames of the limits in force, so an honest sender (one stream, one frame at a time) never comes
    near it. ``header_timeout`` bounds a frame header once its first byte arrived (None: the stall
    timeout); ``idle_timeout`` bounds a stream's silence between frames (reset, not a strike: honest
    senders open a new stream when the old one is gone).
    """

    max_streams: int = MAX_STREAMS
    max_buffered: int = 0
    header_timeout: float | None = None
    idle_timeout: float = IDLE_TIMEOUT
    banned_report_interval: float = BANNED_REPORT_INTERVAL

    def __post_init__(self) -> None:
        if self.max_streams < 1 or self.max_buffered < 0:
            raise ValueError("PeerBudget: max_streams must be >= 1 and max_buffered >= 0")
        if not self.idle_timeout > 0 or not self.banned_report_interval > 0:
            raise ValueError("PeerBudget: idle_timeout and banned_report_interval must be > 0")
        if self.header_timeout is not None and not self.header_timeout > 0:
            raise ValueError("PeerBudget: header_timeout must be > 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class GlobalBudget:
    """What all peers together may hold at any moment, so that many keys (each within its own
    :class:`PeerBudget`) cannot together exhaust the node; strangers (peers neither neighbours nor members,
    see ``is_known``) share a smaller pool of it, so fresh keys cannot crowd out known peers.

    A stream or frame refused because a pool is full is reset without a strike (the pool being full is not
    that peer's doing) and counted in ``stats()["refused_busy"]``. ``max_buffered`` / ``stranger_buffered``
    of 0 mean 16 / 2 frames of the limits in force.
    """

    max_streams: int = 1024
    max_buffered: int = 0
    stranger_streams: int = 64
    stranger_buffered: int = 0

    def __post_init__(self) -> None:
        if (
            min(self.max_streams, self.stranger_streams) < 1
            or min(self.max_buffered, self.stranger_buffered) < 0
        ):
            raise ValueError("GlobalBudget: stream caps must be >= 1 and byte caps >= 0")


BUSY = "busy"  # a pool of the GlobalBudget is full: reset the stream, no strike


class Acquaintances:
    """The node's ``is_known`` for its transport: its neighbours, and the members of its protocol's
    membership view (MoDeST), read at each call, so peers that join or leave change budget at once.

    Fed by the node once it knows them (``meet``); until then everyone is a stranger. A protocol without a
    ``view`` (D-PSGD, Epidemic Learning) contributes its neighbours, and the node's membership roster.
    """

    def __init__(self) -> None:
        self._neighbours: frozenset[str] = frozenset()
        self._is_member: Callable[[str], bool] = lambda peer: False
        self._roster: Callable[[str], bool] | None = None

    def meet(
        self,
        neighbours: Sequence[str],
        protocol: object = None,
        *,
        members: Callable[[str], bool] | None = None,
    ) -> None:
        """``members``: the node's signed membership roster's check (node/members.py), which holds the
        peers a joined D-PSGD or EL node may take as neighbours; MoDeST's view is found on the protocol."""
        self._neighbours = frozenset(neighbours)
        view = getattr(protocol, "view", None)  # duck-typed: no Protocol-wide members accessor yet
        is_member = getattr(view, "is_member", None)
        if callable(is_member):
            self._is_member = is_member
        self._roster = members

    def __call__(self, peer: str) -> bool:
        return (
            peer in self._neighbours
            or bool(self._is_member(peer))
            or (self._roster is not None and self._roster(peer))
        )


#: A stranger's budget on a node: two streams, one frame at a time (known peers: 8 streams, two frames);
#: strangers together hold at most the GlobalBudget's stranger pool.
STRANGER_BUDGET = PeerBudget(max_streams=2)


class TransportError(OSError):
    """A send that failed: the peer is unreachable, the stream broke or the write timed out."""


# ---------------------------------------------------------------- events out of receive()


@dataclass(frozen=True, slots=True)
class Frame:
    peer: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Rejected:
    """``count`` rejections of ``peer`` for ``reason`` (more than one only for coalesced reports)."""

    peer: str
    reason: str
    count: int = 1


@dataclass(frozen=True, slots=True)
class Connected:
    peer: str


@dataclass(frozen=True, slots=True)
class Disconnected:
    peer: str


TransportEvent = Frame | Rejected | Connected | Disconnected


# ---------------------------------------------------------------- the frame reader, shared by both


ReadSome = Callable[[int], Awaitable[bytes]]  # returns b"" at end of stream


async def _read_exactly(read_some: ReadSome, n: int, *, stall: float) -> bytes | None:
    """Exactly n bytes (fewer if the stream ends, None if it ends at once); chunks are joined once."""
    chunks: list[bytes] = []
    have = 0
    while have < n:
        with trio.fail_after(stall):
            chunk = await read_some(min(n - have, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        have += len(chunk)
    if not chunks:
        return None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class Ledger:
    """Each peer's use of its :class:`PeerBudget`, and everyone's use of the :class:`GlobalBudget`: inbound
    streams open and body bytes being read.

    With ``is_known`` and a ``stranger`` budget, peers that are neither neighbours nor members (``is_known``
    says False) get the smaller ``stranger`` budget, so a fresh key buys less than a configured peer has;
    strangers together are bounded by the global budget's stranger pool. Without ``is_known`` every peer
    is known (the pool then bounds nobody).
    """

    def __init__(
        self,
        budget: PeerBudget,
        limits: Limits,
        *,
        stranger: PeerBudget | None = None,
        is_known: Callable[[str], bool] | None = None,
        total: GlobalBudget | None = None,
    ) -> None:
        self.max_streams = budget.max_streams
        self.max_buffered = budget.max_buffered or 2 * limits.max_frame
        strange = stranger or budget
        # a stranger's max_buffered of 0 is one frame (one message at a time), a known peer's two
        self._stranger = (
            strange.max_streams,
            strange.max_buffered or (1 if stranger is not None else 2) * limits.max_frame,
        )
        self._is_known = is_known
        total = total or GlobalBudget()
        self._total = (total.max_streams, total.max_buffered or 16 * limits.max_frame)
        self._strangers_cap = (total.stranger_streams, total.stranger_buffered or 2 * limits.max_frame)
        self._streams: Counter[str] = Counter()
        self._buffered: Counter[str] = Counter()
        self._all = [0, 0]  # streams, bytes: every peer
        self._strangers = [0, 0]  # streams, bytes: strangers only
        self._as_stranger: tuple[Counter[str], Counter[str]] = (Counter(), Counter())
        self.refused_busy = 0

    def _known(self, peer: str) -> bool:
        return self._is_known is None or self._is_known(peer)

    def _take(self, peer: str, what: int, n: int, own: int, cap: int) -> str | None:
        """Charge ``n`` of ``what`` (0 streams, 1 bytes) to ``peer`` and the pools, or say why not."""
        if own + n > cap:
            return "too-many-streams" if what == 0 else "over-budget"
        known = self._known(peer)
        if self._all[what] + n > self._total[what] or (
            not known and self._strangers[what] + n > self._strangers_cap[what]
        ):
            self.refused_busy += 1
            return BUSY
        self._all[what] += n
        if not known:
            self._strangers[what] += n
            self._as_stranger[what][peer] += n
        return None

    def _give(self, peer: str, what: int, n: int) -> None:
        self._all[what] -= n
        # what was charged to the strangers' pool goes back to it, even if the peer became known meanwhile
        charged = self._as_stranger[what]
        back = min(n, charged[peer])
        if back:
            self._strangers[what] -= back
            charged[peer] -= back
            if not charged[peer]:
                del charged[peer]

    def open_stream(self, peer: str) -> str | None:
        """Count a new inbound stream of ``peer``; the reason it is refused (nothing counted), or None."""
        cap = self.max_streams if self._known(peer) else self._stranger[0]
        refused = self._take(peer, 0, 1, self._streams[peer], cap)
        if refused is None:
            self._streams[peer] += 1
        return refused

    def close_stream(self, peer: str) -> None:
        self._give(peer, 0, 1)
        self._streams[peer] -= 1
        if self._streams[peer] <= 0:
            del self._streams[peer]

    def reserve(self, peer: str, n: int) -> str | None:
        """Charge ``n`` body bytes to ``peer`` before reading them; the reason they are refused, or None."""
        cap = self.max_buffered if self._known(peer) else self._stranger[1]
        refused = self._take(peer, 1, n, self._buffered[peer], cap)
        if refused is None:
            self._buffered[peer] += n
        return refused

    def release(self, peer: str, n: int) -> None:
        self._give(peer, 1, n)
        self._buffered[peer] -= n
        if self._buffered[peer] <= 0:
            del self._buffered[peer]

    def stats(self) -> dict[str, int]:
        return {
            "inbound_streams": self._all[0],
            "buffered_bytes": self._all[1],
            "stranger_streams": self._strangers[0],
            "stranger_bytes": self._strangers[1],
            "refused_busy": self.refused_busy,
        }


class BannedReports:
    """Coalesces the refused streams of banned peers: the first is reported at once, the rest as one count
    per peer and interval (so a banned peer opening streams in a loop costs one log line per interval)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.refused = 0  # every refused stream, reported or not yet
        self._last: dict[str, float] = {}
        self._pending: Counter[str] = Counter()

    def note(self, peer: str, now: float) -> int:
        """Count one refused stream; returns how many to report now (0: hold them for later)."""
        self.refused += 1
        self._pending[peer] += 1
        if now - self._last.get(peer, -math.inf) < self.interval:
            return 0
        self._last[peer] = now
        return self._pending.pop(peer)

    def due(self, now: float) -> list[tuple[str, int]]:
        """Held counts whose interval has passed, to report now; forgets peers quiet for an interval."""
        out = []
        for peer in list(self._pending):
            if now - self._last.get(peer, -math.inf) >= self.interval:
                self._last[peer] = now
                out.append((peer, self._pending.pop(peer)))
        for peer in [p for p, t in self._last.items() if now - t >= 2 * self.interval]:
            del self._last[peer]
        return out

    async def run(self, inbox: _Inbox) -> None:
        """Report held counts every interval, until cancelled."""
        while True:
            await trio.sleep(self.interval)
            for peer, count in self.due(trio.current_time()):
                inbox.emit_nowait(Rejected(peer, "banned", count))


async def read_frames(
    read_some: ReadSome,
    peer: str,
    emit: Callable[[TransportEvent], Awaitable[None]],
    *,
    limits: Limits,
    stall: float = STALL_TIMEOUT,
    idle: float = math.inf,
    header_timeout: float | None = None,
    ledger: Ledger | None = None,
) -> bool:
    """Read frames until the stream ends; emit each as :class:`Frame`. Returns False if the stream must be
    reset: a bad, stalled or over-budget frame (already emitted as :class:`Rejected`), or an idle stream.

    A header must complete within ``header_timeout`` (default: ``stall``) of its first byte; a body's
    length is charged to ``ledger`` before any of it is read, and released once the frame is handed on.
    """
    header_timeout = stall if header_timeout is None else header_timeout
    while True:
        try:
            with trio.fail_after(idle):
                header = await read_some(FRAME_HEADER.size)
        except trio.TooSlowError:
            return False  # idle between frames is not an offence, but the stream's slot is freed
        if not header:
            return True
        n = 0
        try:
            if len(header) < FRAME_HEADER.size:
                with trio.fail_after(header_timeout):
                    rest = await _read_exactly(read_some, FRAME_HEADER.size - len(header), stall=math.inf)
                header += rest or b""
                if len(header) < FRAME_HEADER.size:
                    raise WireError("truncated", "stream ended inside a frame header")
            length = frame_length(header, limits)
            if ledger is not None:
                refused = ledger.reserve(peer, length)
                if refused == BUSY:
                    return False  # the node's pool is full: reset, no strike
                if refused is not None:
                    raise WireError(refused, f"a frame of {length} bytes over the peer's buffer budget")
                n = length
            with trio.fail_after(stall + length / MIN_RATE):
                body = await _read_exactly(read_some, length, stall=stall)
            if body is None or len(body) < length:
                raise WireError("truncated", "stream ended inside a frame body")
            await emit(Frame(peer, body))
        except WireError as exc:
            await emit(Rejected(peer, exc.reason))
            return False
        except trio.TooSlowError:
            await emit(Rejected(peer, "stalled"))
            return False
        finally:
            if n and ledger is not None:
                ledger.release(peer, n)


# ---------------------------------------------------------------- the interface


class Transport(ABC):
    """Framed messages to and from peers named by strings."""

    peer_id: str

    @abstractmethod
    async def send(self, peer: str, body: bytes) -> None:
        """Frame ``body`` and deliver it to ``peer``; raises :class:`TransportError` on failure."""

    @abstractmethod
    async def send_raw(self, peer: str, data: bytes, *, close: bool = True) -> None:
        """Write ``data`` as-is on a fresh stream to ``peer`` (tests: a misbehaving peer); ``close=False``
        leaves the stream open, as a stalling peer would."""

    @abstractmethod
    async def receive(self) -> TransportEvent:
        """The next event: a frame, a rejection, a peer connecting or going away."""

    @abstractmethod
    def peers(self) -> set[str]:
        """Peers with an open connection."""

    @abstractmethod
    async def aclose(self) -> None: ...

    def add_address(self, address: str) -> str:
        """Remember where a peer listens; returns its peer id. In-memory transports take the peer id itself."""
        return address

    def stats(self) -> dict[str, int]:
        """Counters for operators: inbound streams open, body bytes being read, banned peers' streams refused."""
        return {}


class _Inbox:
    """One queue of events with a bound on frames waiting (control events never block their producer)."""

    def __init__(self, slots: int = FRAME_SLOTS) -> None:
        self._send, self._recv = trio.open_memory_channel[TransportEvent](math.inf)
        self._slots = trio.Semaphore(slots)

    async def emit(self, event: TransportEvent) -> None:
        if isinstance(event, Frame):
            await self._slots.acquire()
        with suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            self._send.send_nowait(event)

    def emit_nowait(self, event: TransportEvent) -> None:
        with suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            self._send.send_nowait(event)

    async def receive(self) -> TransportEvent:
        event = await self._recv.receive()
        if isinstance(event, Frame):
            self._slots.release()
        return event

    def close(self) -> None:
        self._send.close()


class _RefusedBanned(Exception):
    """A frame arrived from a peer banned while its stream was open: end that stream."""


def _admit(
    peer: str, is_banned: Callable[[str], bool], ledger: Ledger, reports: BannedReports, inbox: _Inbox
) -> bool:
    """Whether a new inbound stream of ``peer`` may be read (if so, it is counted in ``ledger``)."""
    if is_banned(peer):
        count = reports.note(peer, trio.current_time())
        if count:
            inbox.emit_nowait(Rejected(peer, "banned", count))
        return False
    refused = ledger.open_stream(peer)
    if refused is None:
        return True
    if refused != BUSY:
        inbox.emit_nowait(Rejected(peer, refused))
    return False


async def _emit_unless_banned(
    is_banned: Callable[[str], bool], reports: BannedReports, inbox: _Inbox, event: TransportEvent
) -> None:
    if isinstance(event, Frame) and is_banned(event.peer):
        count = reports.note(event.peer, trio.current_time())
        if count:
            inbox.emit_nowait(Rejected(event.peer, "banned", count))
        raise _RefusedBanned
    await inbox.emit(event)


# ---------------------------------------------------------------- in memory


class MemoryNetwork:
    """A set of in-memory transports that reach each other by name (for tests and small experiments)."""

    def __init__(
        self,
        *,
        limits: Limits,
        stall: float = STALL_TIMEOUT,
        budget: PeerBudget | None = None,
        stranger_budget: PeerBudget | None = None,
        total: GlobalBudget | None = None,
    ) -> None:
        self.limits = limits
        self.stall = stall
        self.budget = budget or PeerBudget()
        self.stranger_budget = stranger_budget
        self.total = total
        self.nodes: dict[str, MemoryTransport] = {}
        self._nursery: trio.Nursery | None = None

    @asynccontextmanager
    async def run(self) -> AsyncIterator[MemoryNetwork]:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                yield self
            finally:
                nursery.cancel_scope.cancel()

    def transport(
        self,
        name: str,
        *,
        is_banned: Callable[[str], bool] = lambda peer: False,
        is_known: Callable[[str], bool] | None = None,
    ) -> MemoryTransport:
        """A transport named ``name``; ``is_known`` tells its neighbours and members from strangers (who get
        the network's ``stranger_budget``)."""
        assert self._nursery is not None, "use MemoryNetwork.run()"
        t = MemoryTransport(self, name, is_banned=is_banned, is_known=is_known)
        self.nodes[name] = t
        self._nursery.start_soon(t._reports.run, t._inbox)
        return t


class MemoryTransport(Transport):
    def __init__(
        self,
        network: MemoryNetwork,
        name: str,
        *,
        is_banned: Callable[[str], bool] = lambda peer: False,
        is_known: Callable[[str], bool] | None = None,
    ) -> None:
        self.peer_id = name
        self._net = network
        self._is_banned = is_banned
        self._ledger = Ledger(
            network.budget,
            network.limits,
            stranger=network.stranger_budget,
            is_known=is_known,
            total=network.total,
        )
        self._reports = BannedReports(network.budget.banned_report_interval)
        self._inbox = _Inbox()
        self._out: dict[str, trio.abc.SendStream] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._connected: set[str] = set()
        self._held: list[trio.abc.SendStream] = []
        self._closed = False

    def _link(self, peer: str) -> MemoryTransport:
        other = self._net.nodes.get(peer)
        if other is None or other._closed or self._closed:
            raise TransportError(f"peer {peer} unreachable")
        if peer not in self._connected:
            self._connected.add(peer)
            other._connected.add(self.peer_id)
            self._inbox.emit_nowait(Connected(peer))
            other._inbox.emit_nowait(Connected(self.peer_id))
        return other

    def _open_stream(self, other: MemoryTransport) -> trio.abc.SendStream:
        send, recv = trio.testing.memory_stream_one_way_pair()
        assert self._net._nursery is not None, "use MemoryNetwork.run()"
        self._net._nursery.start_soon(other._serve, recv, self.peer_id)
        return send

    async def _serve(self, recv: trio.abc.ReceiveStream, peer: str) -> None:
        async def read_some(n: int) -> bytes:
            return await recv.receive_some(n)

        async with recv:
            if not _admit(peer, self._is_banned, self._ledger, self._reports, self._inbox):
                return
            budget = self._net.budget
            try:
                await read_frames(
                    read_some,
                    peer,
                    partial(_emit_unless_banned, self._is_banned, self._reports, self._inbox),
                    limits=self._net.limits,
                    stall=self._net.stall,
                    idle=budget.idle_timeout,
                    header_timeout=budget.header_timeout,
                    ledger=self._ledger,
                )
            except _RefusedBanned:
                pass
            finally:
                self._ledger.close_stream(peer)

    def stats(self) -> dict[str, int]:
        """Inbound streams open, body bytes being read, streams of banned peers refused."""
        return {**self._ledger.stats(), "refused_banned": self._reports.refused}

    async def send(self, peer: str, body: bytes) -> None:
        other = self._link(peer)
        async with self._locks.setdefault(peer, trio.Lock()):
            stream = self._out.get(peer)
            if stream is None:
                stream = self._out[peer] = self._open_stream(other)
            try:
                await stream.send_all(frame(body))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._out.pop(peer, None)
                raise TransportError(f"send to {peer} failed") from exc

    async def send_raw(self, peer: str, data: bytes, *, close: bool = True) -> None:
        stream = self._open_stream(self._link(peer))
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportError(f"raw send to {peer} failed") from exc
        if close:
            await stream.aclose()
        else:
            self._held.append(stream)

    async def receive(self) -> TransportEvent:
        return await self._inbox.receive()

    def peers(self) -> set[str]:
        return set(self._connected)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for stream in self._out.values():
            await stream.aclose()
        for peer in self._connected:
            other = self._net.nodes.get(peer)
            if other is not None:
                other._connected.discard(self.peer_id)
                other._inbox.emit_nowait(Disconnected(self.peer_id))
        self._connected.clear()
        self._inbox.close()


# ---------------------------------------------------------------- libp2p


class Libp2pTransport(Transport):
    """Frames over py-libp2p streams. Create it with :func:`open_libp2p_transport`."""

    def __init__(
        self,
        host: Any,
        *,
        limits: Limits,
        is_banned: Callable[[str], bool],
        stall: float,
        send_timeout: float,
        budget: PeerBudget | None = None,
        stranger_budget: PeerBudget | None = None,
        is_known: Callable[[str], bool] | None = None,
        total: GlobalBudget | None = None,
    ) -> None:
        self.host = host
        self.peer_id = host.get_id().to_base58()
        self.limits = limits
        self.budget = budget or PeerBudget()
        self._is_banned = is_banned
        self._stall = stall
        self._send_timeout = send_timeout
        self._ledger = Ledger(self.budget, limits, stranger=stranger_budget, is_known=is_known, total=total)
        self._reports = BannedReports(self.budget.banned_report_interval)
        self._inbox = _Inbox()
        self._out: dict[str, Any] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._conns: dict[str, int] = {}
        self.relay: Any = None  # node/relay.py's Relay, with open_libp2p_transport(relay=...)

    # libp2p calls these (see _Notifee)
    def _on_connected(self, peer: str) -> None:
        self._conns[peer] = self._conns.get(peer, 0) + 1
        if self._conns[peer] == 1:
            self._inbox.emit_nowait(Connected(peer))

    def _on_disconnected(self, peer: str) -> None:
        count = self._conns.get(peer, 0) - 1
        if count <= 0:
            self._conns.pop(peer, None)
            self._out.pop(peer, None)
            self._inbox.emit_nowait(Disconnected(peer))
        else:
            self._conns[peer] = count

    async def _handle_stream(self, stream: Any) -> None:
        peer = stream.muxed_conn.peer_id.to_base58()
        if not _admit(peer, self._is_banned, self._ledger, self._reports, self._inbox):
            await _quietly(stream.reset())
            return

        async def read_some(n: int) -> bytes:
            from libp2p.network.stream.exceptions import StreamEOF

            try:
                return bytes(await stream.read(n))
            except StreamEOF:
                return b""

        try:
            clean = await read_frames(
                read_some,
                peer,
                partial(_emit_unless_banned, self._is_banned, self._reports, self._inbox),
                limits=self.limits,
                stall=self._stall,
                idle=self.budget.idle_timeout,
                header_timeout=self.budget.header_timeout,
                ledger=self._ledger,
            )
        except trio.Cancelled:
            raise
        except Exception:  # the stream broke under us (reset, connection lost), or its peer is now banned
            clean = False
        finally:
            self._ledger.close_stream(peer)
        await _quietly(stream.close() if clean else stream.reset())

    def stats(self) -> dict[str, int]:
        """Inbound streams open, body bytes being read, streams of banned peers refused."""
        return {**self._ledger.stats(), "refused_banned": self._reports.refused}

    def add_address(self, address: str) -> str:
        import multiaddr
        from libp2p.peer.peerinfo import info_from_p2p_addr

        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(address))
        except Exception as exc:
            raise ValueError(f"not a peer multiaddr with /p2p/<peer id>: {address!r}") from exc
        self.host.get_peerstore().add_addrs(info.peer_id, info.addrs, 10**9)
        return str(info.peer_id.to_base58())

    async def _open(self, peer: str) -> Any:
        from libp2p.custom_types import TProtocol
        from libp2p.peer.id import ID

        pid = ID.from_base58(peer)
        if self.relay is not None and not self.host.get_network().get_connections(pid):
            from libp2p.peer.peerinfo import PeerInfo

            # the swarm's own dial skips /p2p-circuit addresses: the relay's connect dials them
            await self.host.connect(PeerInfo(pid, self.host.get_peerstore().addrs(pid)))
        return await self.host.new_stream(pid, [TProtocol(PROTOCOL_ID)])

    async def send(self, peer: str, body: bytes) -> None:
        header = FRAME_HEADER.pack(len(body))  # header and body written separately: no 4 MB concatenation
        async with self._locks.setdefault(peer, trio.Lock()):
            for attempt in (0, 1):
                stream = self._out.get(peer)
                try:
                    with trio.fail_after(self._send_timeout):
                        if stream is None:
                            stream = self._out[peer] = await self._open(peer)
                        await stream.write(header)
                        await stream.write(body)
                    return
                except trio.Cancelled:
                    raise
                except Exception as exc:  # libp2p raises many kinds (dial, negotiation, stream, timeout)
                    self._out.pop(peer, None)
                    if stream is not None:
                        await _quietly(stream.reset())
                    if attempt == 1 or isinstance(exc, trio.TooSlowError):
                        raise TransportError(f"send to {peer} failed: {type(exc).__name__}") from None

    async def send_raw(self, peer: str, data: bytes, *, close: bool = True) -> None:
        try:
            with trio.fail_after(self._send_timeout):
                stream = await self._open(peer)
                await stream.write(data)
                if close:
                    await stream.close()
        except trio.Cancelled:
            raise
        except Exception as exc:
            raise TransportError(f"raw send to {peer} failed: {type(exc).__name__}") from None

    async def receive(self) -> TransportEvent:
        return await self._inbox.receive()

    def peers(self) -> set[str]:
        return set(self._conns)

    async def connect(self, peer: str) -> None:
        """Dial ``peer`` (its address must be known, see :meth:`add_address`); raises TransportError."""
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo

        pid = ID.from_base58(peer)
        try:
            with trio.fail_after(self._send_timeout):
                await self.host.connect(PeerInfo(pid, self.host.get_peerstore().addrs(pid)))
        except trio.Cancelled:
            raise
        except Exception as exc:
            raise TransportError(f"connect to {peer} failed: {type(exc).__name__}") from None

    def listen_addresses(self) -> list[str]:
        """The announced addresses, with /p2p/PEER_ID; with a relay reservation, its circuit address too."""
        own = [str(a) for a in self.host.get_addrs()]
        return own + (list(self.relay.announced) if self.relay is not None else [])

    async def aclose(self) -> None:
        self._inbox.close()


async def _quietly(aw: Awaitable[Any]) -> None:
    try:
        with trio.move_on_after(2):
            await aw
    except trio.Cancelled:
        raise
    except Exception:
        pass


def _notifee(transport: Libp2pTransport) -> Any:
    from libp2p.abc import INotifee

    class _Notifee(INotifee):
        async def opened_stream(self, network: Any, stream: Any) -> None:
            pass

        async def closed_stream(self, network: Any, stream: Any) -> None:
            pass

        async def connected(self, network: Any, conn: Any) -> None:
            transport._on_connected(conn.muxed_conn.peer_id.to_base58())

        async def disconnected(self, network: Any, conn: Any) -> None:
            transport._on_disconnected(conn.muxed_conn.peer_id.to_base58())

        async def listen(self, network: Any, multiaddr: Any) -> None:
            pass

        async def listen_close(self, network: Any, multiaddr: Any) -> None:
            pass

    return _Notifee()


@asynccontextmanager
async def open_libp2p_transport(
    key_pair: Any,
    *,
    listen: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
    limits: Limits,
    is_banned: Callable[[str], bool] = lambda peer: False,
    stall: float = STALL_TIMEOUT,
    send_timeout: float = SEND_TIMEOUT,
    budget: PeerBudget | None = None,
    stranger_budget: PeerBudget | None = None,
    is_known: Callable[[str], bool] | None = None,
    total: GlobalBudget | None = None,
    addrs_factory: Callable[[list[Any]], list[Any]] | None = None,
    relay_service: bool = False,
    relay_via: Sequence[str] = (),
    relay_dial: bool = False,
) -> AsyncIterator[Libp2pTransport]:
    """A running libp2p host (TCP, Noise, yamux) listening on ``listen``, wrapped as a transport.

    ``budget`` applies to every peer, or only to the peers ``is_known`` accepts (neighbours, members) when
    a ``stranger_budget`` is given for the others; ``total`` bounds all peers together (default
    :class:`GlobalBudget`). ``addrs_factory`` turns its bound addresses into the
    ones it announces (see node/addresses.py).

    Circuit Relay v2 (node/relay.py): ``relay_service`` relays for others; ``relay_via`` (relay multiaddrs
    with /p2p/ID) reserves a slot on each before the transport is yielded, and announces this node's
    ``/p2p-circuit`` address there. With either, or ``relay_dial``, peers at ``/p2p-circuit`` addresses can be dialled."""
    import multiaddr
    from libp2p import new_host

    try:
        addrs = [multiaddr.Multiaddr(a) for a in listen]
    except Exception as exc:
        raise ValueError(f"bad listen multiaddr in {list(listen)!r}: {exc}") from None
    from phalanx.node.libp2p_tuning import tune_yamux

    tune_yamux()  # 1 MiB yamux frames: 1.7x faster 4 MB exchanges, see node/libp2p_tuning.py
    host = new_host(key_pair=key_pair, addrs_factory=addrs_factory)
    transport = Libp2pTransport(
        host,
        limits=limits,
        is_banned=is_banned,
        stall=stall,
        send_timeout=send_timeout,
        budget=budget,
        stranger_budget=stranger_budget,
        is_known=is_known,
        total=total,
    )
    from libp2p.custom_types import TProtocol

    host.set_stream_handler(TProtocol(PROTOCOL_ID), transport._handle_stream)
    host.get_network().register_notifee(_notifee(transport))
    async with host.run(addrs):
        if not host.get_network().listeners:
            # py-libp2p logs a failed listen and carries on; a node that cannot listen must not.
            raise OSError(f"cannot listen on {', '.join(listen)} (address in use or not available)")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(transport._reports.run, transport._inbox)
            try:
                if relay_service or relay_via or relay_dial:
                    from phalanx.node.relay import open_relay

                    async with open_relay(host, service=relay_service) as relay:
                        transport.relay = relay
                        for addr in relay_via:
                            await relay.reserve(addr, nursery)
                        yield transport
                else:
                    yield transport
            finally:
                nursery.cancel_scope.cancel()
                await transport.aclose()
