"""Transports: framed byte messages between peers, with a libp2p implementation and an in-memory one.

The interface is small (docs/design.md): ``send(peer, body)``, ``receive() -> TransportEvent``,
``peers()`` and ``aclose()``, plus ``send_raw`` for tests that play a misbehaving peer. Both
implementations frame bodies with :func:`phalanx.gossip.wire.frame` and read them back with the same
:func:`read_frames` loop, which enforces the frame limit *before* reading a body and times out streams that
stall. A frame-level problem ends that stream and comes out of ``receive()`` as :class:`Rejected`; the
transport never raises because of a peer's bytes.

libp2p: TCP + Noise + yamux (py-libp2p defaults). Each sender keeps one long-lived stream per peer on
:data:`PROTOCOL_ID` and writes frames into it; a failed write drops the stream and retries once on a new
one (the peer may have restarted).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import trio
import trio.testing

from phalanx.gossip.wire import FRAME_HEADER, Limits, WireError, frame, frame_length

PROTOCOL_ID = "/phalanx/gossip/1.0.0"
STALL_TIMEOUT = 10.0  # seconds without progress inside a frame before the stream is dropped
MIN_RATE = 1_000_000  # bytes/s: a frame of n bytes must arrive within STALL_TIMEOUT + n / MIN_RATE
SEND_TIMEOUT = 30.0
FRAME_SLOTS = 16  # received frames waiting for receive(): bounds memory, applies back-pressure


class TransportError(OSError):
    """A send that failed: the peer is unreachable, the stream broke or the write timed out."""


# ---------------------------------------------------------------- events out of receive()


@dataclass(frozen=True, slots=True)
class Frame:
    peer: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Rejected:
    peer: str
    reason: str


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


async def read_frames(
    read_some: ReadSome,
    peer: str,
    emit: Callable[[TransportEvent], Awaitable[None]],
    *,
    limits: Limits,
    stall: float = STALL_TIMEOUT,
    idle: float = math.inf,
) -> bool:
    """Read frames until the stream ends; emit each as :class:`Frame`. Returns False if the stream must be
    reset because of a bad or stalled frame (already emitted as :class:`Rejected`)."""
    while True:
        try:
            with trio.fail_after(idle):
                header = await _read_exactly(read_some, FRAME_HEADER.size, stall=math.inf)
        except trio.TooSlowError:
            return True  # an idle stream between frames is not an offence; just close it
        if header is None:
            return True
        try:
            if len(header) < FRAME_HEADER.size:
                raise WireError("truncated", "stream ended inside a frame header")
            n = frame_length(header, limits)
            with trio.fail_after(stall + n / MIN_RATE):
                body = await _read_exactly(read_some, n, stall=stall)
            if body is None or len(body) < n:
                raise WireError("truncated", "stream ended inside a frame body")
        except WireError as exc:
            await emit(Rejected(peer, exc.reason))
            return False
        except trio.TooSlowError:
            await emit(Rejected(peer, "stalled"))
            return False
        await emit(Frame(peer, body))


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


# ---------------------------------------------------------------- in memory


class MemoryNetwork:
    """A set of in-memory transports that reach each other by name (for tests and small experiments)."""

    def __init__(self, *, limits: Limits, stall: float = STALL_TIMEOUT) -> None:
        self.limits = limits
        self.stall = stall
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

    def transport(self, name: str) -> MemoryTransport:
        t = MemoryTransport(self, name)
        self.nodes[name] = t
        return t


class MemoryTransport(Transport):
    def __init__(self, network: MemoryNetwork, name: str) -> None:
        self.peer_id = name
        self._net = network
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

        await read_frames(read_some, peer, self._inbox.emit, limits=self._net.limits, stall=self._net.stall)
        await recv.aclose()

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
        await stream.send_all(data)
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
    ) -> None:
        self.host = host
        self.peer_id = host.get_id().to_base58()
        self.limits = limits
        self._is_banned = is_banned
        self._stall = stall
        self._send_timeout = send_timeout
        self._inbox = _Inbox()
        self._out: dict[str, Any] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._conns: dict[str, int] = {}

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
        if self._is_banned(peer):
            await self._inbox.emit(Rejected(peer, "banned"))
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
                read_some, peer, self._emit_unless_banned, limits=self.limits, stall=self._stall
            )
        except trio.Cancelled:
            raise
        except Exception:  # the stream broke under us (reset, connection lost): nothing to count
            clean = False
        await _quietly(stream.close() if clean else stream.reset())

    async def _emit_unless_banned(self, event: TransportEvent) -> None:
        if isinstance(event, Frame) and self._is_banned(event.peer):
            event = Rejected(event.peer, "banned")
        await self._inbox.emit(event)

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

        return await self.host.new_stream(ID.from_base58(peer), [TProtocol(PROTOCOL_ID)])

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
        return [str(a) for a in self.host.get_addrs()]

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
    addrs_factory: Callable[[list[Any]], list[Any]] | None = None,
) -> AsyncIterator[Libp2pTransport]:
    """A running libp2p host (TCP, Noise, yamux) listening on ``listen``, wrapped as a transport.
    ``addrs_factory`` turns its bound addresses into the ones it announces (see node/addresses.py)."""
    import multiaddr
    from libp2p import new_host

    try:
        addrs = [multiaddr.Multiaddr(a) for a in listen]
    except Exception as exc:
        raise ValueError(f"bad listen multiaddr in {list(listen)!r}: {exc}") from None
    host = new_host(key_pair=key_pair, addrs_factory=addrs_factory)
    transport = Libp2pTransport(
        host, limits=limits, is_banned=is_banned, stall=stall, send_timeout=send_timeout
    )
    from libp2p.custom_types import TProtocol

    host.set_stream_handler(TProtocol(PROTOCOL_ID), transport._handle_stream)
    host.get_network().register_notifee(_notifee(transport))
    async with host.run(addrs):
        if not host.get_network().listeners:
            # py-libp2p logs a failed listen and carries on; a node that cannot listen must not.
            raise OSError(f"cannot listen on {', '.join(listen)} (address in use or not available)")
        try:
            yield transport
        finally:
            await transport.aclose()
