"""Circuit Relay v2 for a node (py-libp2p's ``libp2p.relay.circuit_v2``): serve as a relay, reserve a slot on
one, and dial peers at ``/p2p-circuit`` addresses.

py-libp2p 0.8.1 has the parts but does not put them together: its swarm drops every ``/p2p-circuit``
address before dialling ("this node has no relay transport", network/swarm.py ``dial_peer``), and the
circuit transport (``CircuitV2Transport``) is never registered with the swarm. So :class:`Relay`

- runs ``CircuitV2Protocol`` (the STOP handler always: it accepts relayed connections; the HOP handler with
  ``service``: it relays for others, with :data:`SERVICE_LIMITS`);
- wraps this host's ``connect`` (on the instance): a peer with no connection yet whose known addresses
  include ``/p2p-circuit`` ones is dialled directly first (if it has direct addresses), then through each
  circuit address with ``CircuitV2Transport.dial``, whose connection the swarm keeps like any other; every
  later ``new_stream`` to that peer uses it;
- :meth:`reserve` reserves a slot on a relay (refreshed before it expires by py-libp2p's refresher) and
  returns the address this node announces: ``<relay addr>/p2p-circuit/p2p/<own id>``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

# Relay limits when this node serves: a relayed connection carries models for as long as a run lasts.
SERVICE_DURATION = 24 * 3600  # seconds a relayed connection may last
SERVICE_DATA = 1 << 40  # bytes it may carry
SERVICE_CIRCUITS = 64
SERVICE_RESERVATIONS = 64
DIAL_TIMEOUT = 15.0
RESERVE_PATIENCE = 30.0  # seconds a starting node keeps trying its relay (which may be starting too)


def is_circuit(addr: Any) -> bool:
    return "/p2p-circuit" in str(addr)


class RelayError(OSError):
    """A reservation that failed: the relay is unreachable, serves no relay, or refused."""


class _Unreachable(Exception):
    pass


class Relay:
    """The relay parts of one host; make it with :func:`open_relay`."""

    def __init__(self, host: Any, *, service: bool) -> None:
        from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
        from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
        from libp2p.relay.circuit_v2.resources import RelayLimits
        from libp2p.relay.circuit_v2.transport import CircuitV2Transport

        self.host = host
        self.service = service
        limits = RelayLimits(
            duration=SERVICE_DURATION,
            data=SERVICE_DATA,
            max_circuit_conns=SERVICE_CIRCUITS,
            max_reservations=SERVICE_RESERVATIONS,
        )
        self.protocol = CircuitV2Protocol(host, limits=limits, allow_hop=service)
        roles = RelayRole.STOP | RelayRole.CLIENT | (RelayRole.HOP if service else RelayRole(0))
        self.transport = CircuitV2Transport(host, self.protocol, RelayConfig(roles=roles, limits=limits))
        self.announced: list[str] = []  # this node's /p2p-circuit addresses, once reserved
        self._direct_connect = host.connect
        host.connect = self.connect  # the swarm cannot dial /p2p-circuit: route those dials here

    async def connect(self, peer_info: Any) -> None:
        """``host.connect`` with circuit addresses: direct ones first, then each circuit, until one works."""
        from libp2p.peer.peerinfo import PeerInfo

        pid = peer_info.peer_id
        network = self.host.get_network()
        if network.get_connections(pid):
            return
        addrs = list(peer_info.addrs) or list(self.host.get_peerstore().addrs(pid))
        circuits = [a for a in addrs if is_circuit(a)]
        direct = [a for a in addrs if not is_circuit(a)]
        if not circuits:
            await self._direct_connect(peer_info)
            return
        failure: BaseException | None = None
        if direct:
            try:
                await self._direct_connect(PeerInfo(pid, direct))
                return
            except trio.Cancelled:
                raise
            except Exception as exc:
                failure = exc
        import multiaddr

        for circuit in circuits:
            full = (
                circuit
                if circuit.get_peer_id() == pid.to_base58()
                else circuit.encapsulate(multiaddr.Multiaddr(f"/p2p/{pid.to_base58()}"))
            )
            try:
                with trio.fail_after(DIAL_TIMEOUT):
                    await self.transport.dial(full)
                return
            except trio.Cancelled:
                raise
            except Exception as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def reserve(
        self, relay_addr: str, nursery: trio.Nursery, *, patience: float = RESERVE_PATIENCE
    ) -> str:
        """Reserve a slot on the relay at ``relay_addr`` (``/ip4/.../tcp/PORT/p2p/RELAY_ID``); returns and
        remembers this node's circuit address there. An unreachable relay is tried again (0.25 s, doubling
        to 4 s) for ``patience`` seconds, then :class:`RelayError`; a refusal is final at once."""
        deadline = trio.current_time() + patience
        delay = 0.25
        while True:
            try:
                return await self._reserve_once(relay_addr, nursery)
            except _Unreachable as exc:
                if trio.current_time() + delay > deadline:
                    raise RelayError(str(exc)) from None
                await trio.sleep(delay)
                delay = min(delay * 2, 4.0)

    async def _reserve_once(self, relay_addr: str, nursery: trio.Nursery) -> str:
        import multiaddr
        from libp2p.custom_types import TProtocol
        from libp2p.peer.peerinfo import info_from_p2p_addr
        from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID

        info = info_from_p2p_addr(multiaddr.Multiaddr(relay_addr))
        self.host.get_peerstore().add_addrs(info.peer_id, info.addrs, 10**9)
        try:
            with trio.fail_after(DIAL_TIMEOUT):
                await self._direct_connect(info)
        except trio.Cancelled:
            raise
        except Exception as exc:
            # py-libp2p caches a failed dial for 60 s: lift it, or every retry fails without trying
            self.host.get_network().unblock_peer(info.peer_id)
            raise _Unreachable(f"relay {relay_addr}: {type(exc).__name__}: {exc}") from None
        try:  # connected: a failure from here on is the relay's answer, not worth another try
            with trio.fail_after(DIAL_TIMEOUT):
                stream = await self.host.new_stream(info.peer_id, [TProtocol(str(PROTOCOL_ID))])
                ok = await self.transport.reserve(stream, info.peer_id, nursery)
        except trio.Cancelled:
            raise
        except Exception as exc:
            raise RelayError(
                f"relay {relay_addr} serves no relay (is it a --relay-service node?): {type(exc).__name__}"
            ) from None
        if not ok:
            raise RelayError(f"relay {relay_addr} refused the reservation (is it a --relay-service node?)")
        own = f"{relay_addr}/p2p-circuit/p2p/{self.host.get_id().to_base58()}"
        self.announced.append(own)
        return own


@asynccontextmanager
async def open_relay(host: Any, *, service: bool) -> AsyncIterator[Relay]:
    """The host's relay parts, running (the protocol's service) while the context is open."""
    from libp2p.tools.anyio_service import background_trio_service

    relay = Relay(host, service=service)
    async with background_trio_service(relay.protocol):
        await relay.protocol.event_started.wait()
        yield relay
