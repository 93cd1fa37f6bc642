"""The addresses a node announces: what other peers are told to dial.

A node listening on a wildcard (``/ip4/0.0.0.0/tcp/PORT``, ``/ip6/::/tcp/PORT``) accepts connections on every
interface, but the wildcard itself is not an address anybody can dial. The node announces, instead, one address
per interface address of that family (loopback only when the host has nothing else), with the port it bound.
``--announce MULTIADDR`` replaces all of that with addresses the user knows are right (a public IP behind a
port forward, a DNS name).

Interface addresses come from the kernel with no dependency: IPv4 through the ``SIOCGIFADDR`` ioctl on every
name of :func:`socket.if_nameindex`, IPv6 from ``/proc/net/if_inet6`` (Linux). Elsewhere the list may be empty,
and a wildcard listen address is then announced as nothing; ``--announce`` covers that case.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SIOCGIFADDR = 0x8915  # Linux <linux/sockios.h>
WILDCARDS = {"ip4": "0.0.0.0", "ip6": "::"}


class AddressError(ValueError):
    """A multiaddr that cannot be announced."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InterfaceAddress:
    name: str
    family: str  # "ip4" or "ip6"
    address: str

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.address).is_loopback

    @property
    def unspecified(self) -> bool:
        return ipaddress.ip_address(self.address).is_unspecified

    @property
    def link_local(self) -> bool:
        return ipaddress.ip_address(self.address).is_link_local


def _ipv4_of(name: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            import fcntl

            packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except (OSError, ImportError):
            return None  # an interface without an IPv4 address, or not Linux
    return socket.inet_ntoa(packed[20:24])


def _ipv6_addresses(proc: Path = Path("/proc/net/if_inet6")) -> list[InterfaceAddress]:
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) != 6 or len(parts[0]) != 32:
            continue
        address = str(ipaddress.IPv6Address(bytes.fromhex(parts[0])))
        out.append(InterfaceAddress(name=parts[5], family="ip6", address=address))
    return out


def interface_addresses() -> list[InterfaceAddress]:
    """Every IPv4 and IPv6 address of this host's (this network namespace's) interfaces."""
    out = []
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        names = []
    for name in names:
        ip4 = _ipv4_of(name)
        if ip4 is not None:
            out.append(InterfaceAddress(name=name, family="ip4", address=ip4))
    return out + _ipv6_addresses()


def _split(addr: str) -> tuple[str, str, str]:
    """(family, host, rest) of ``/ip4/HOST/REST...``; family is "" for anything else (dns, p2p-circuit)."""
    parts = addr.split("/")
    if len(parts) >= 3 and parts[0] == "" and parts[1] in ("ip4", "ip6"):
        return parts[1], parts[2], "/".join(parts[3:])
    return "", "", addr


def without_peer_id(addr: str) -> str:
    head, sep, _ = addr.partition("/p2p/")
    return head if sep else addr


def expand(
    candidates: Sequence[str],
    interfaces: Sequence[InterfaceAddress],
) -> list[str]:
    """``candidates`` (bound listen addresses) with every wildcard replaced by one address per interface
    address of its family. Loopback addresses stand in only when a family has no other; IPv6 link-local
    addresses are left out (they need a zone to be dialled). Order is kept; duplicates are dropped."""
    usable: dict[str, list[str]] = {}
    for family in ("ip4", "ip6"):
        ours = [a for a in interfaces if a.family == family and not (a.link_local or a.unspecified)]
        routable = [a.address for a in ours if not a.loopback]
        usable[family] = routable or [a.address for a in ours]
    out: list[str] = []
    for addr in candidates:
        addr = without_peer_id(addr)
        family, host, rest = _split(addr)
        if family and host == WILDCARDS[family]:
            out.extend(f"/{family}/{ip}/{rest}" for ip in usable[family])
        elif family and host in ("0.0.0.0", "::"):
            continue  # a wildcard of the other spelling: never announced
        else:
            out.append(addr)
    return list(dict.fromkeys(out))


def check_announce(addr: str) -> str:
    """One ``--announce`` value, checked: a multiaddr without a wildcard host; returns it without /p2p/."""
    import multiaddr

    try:
        multiaddr.Multiaddr(addr)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AddressError(f"bad announce multiaddr {addr!r}: {reason}") from None
    family, host, _ = _split(addr)
    if family and ipaddress.ip_address(host).is_unspecified:
        raise AddressError(f"announce address {addr!r} is a wildcard; announce an address peers can dial")
    return without_peer_id(addr)


def announced(
    listen: Sequence[str],
    announce: Sequence[str] = (),
    *,
    interfaces: Sequence[InterfaceAddress] | None = None,
) -> list[str]:
    """What a node announces: ``announce`` when given (checked), else ``listen`` with wildcards expanded."""
    if announce:
        return list(dict.fromkeys(check_announce(a) for a in announce))
    return expand(listen, interface_addresses() if interfaces is None else interfaces)


def with_peer_id(addrs: Sequence[str], peer_id: str) -> list[str]:
    return [f"{without_peer_id(a)}/p2p/{peer_id}" for a in addrs]


def addrs_factory(announce: Sequence[str] = ()) -> Callable[[list[Any]], list[Any]]:
    """A py-libp2p ``addrs_factory``: the host's candidate addresses (multiaddrs) -> what it advertises."""
    import multiaddr

    fixed = [multiaddr.Multiaddr(a) for a in announced((), announce)] if announce else None

    def factory(candidates: list[Any]) -> list[Any]:
        if fixed is not None:
            return list(fixed)
        return [multiaddr.Multiaddr(a) for a in announced([str(c) for c in candidates])]

    return factory


# ---------------------------------------------------------------- why a peer cannot be reached

_ERRNO_REASONS = {
    errno.ECONNREFUSED: "connection refused (nothing listens on that address)",
    errno.ETIMEDOUT: "timed out",
    errno.EHOSTUNREACH: "no route to host",
    errno.ENETUNREACH: "network unreachable",
    errno.ECONNRESET: "connection reset",
    errno.EADDRNOTAVAIL: "address not available",
}


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and everything under it: causes, contexts, and the members of libp2p's MultiError and of
    exception groups, depth first, each once."""
    out: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop()
        if any(e is seen for seen in out):
            continue
        out.append(e)
        members = getattr(e, "errors", None) or getattr(e, "exceptions", None)
        if isinstance(members, (list, tuple)):
            todo.extend(m for m in reversed(members) if isinstance(m, BaseException))
        for nxt in (e.__context__, e.__cause__):
            if nxt is not None:
                todo.append(nxt)
    return out


def dial_failure(exc: BaseException) -> str:
    """A short reason why a dial failed, dug out of py-libp2p's wrapped exceptions (which otherwise read
    'SwarmException: unable to connect to PEER, no addresses established a successful connection')."""
    import trio

    chain = _causes(exc)
    for e in chain:
        if isinstance(e, OSError) and e.errno in _ERRNO_REASONS:
            return _ERRNO_REASONS[e.errno]
    for e in chain:
        text, kind = str(e), type(e).__name__
        if "Mismatch" in kind or "mismatch" in text.lower():
            return "peer id mismatch (another node listens on that address)"
        if kind.startswith("Multiselect"):
            return "not a libp2p peer (protocol negotiation failed)"
        if "negative cache" in text:
            return "failed moments ago (py-libp2p refuses to redial a peer for 60 s after a failed dial)"
        if isinstance(e, trio.TooSlowError):
            return "timed out"
    for e in reversed(chain):  # the innermost message that says something
        text = str(e).splitlines()[0].strip() if str(e) else ""
        if text:
            return f"{type(e).__name__}: {text}"[:200]
    return type(exc).__name__


WATCH_FIRST_RETRY = 1.0
WATCH_MAX_RETRY = 30.0


async def watch_neighbour(
    transport: Any, peer: str, address: str, log: Callable[..., None], *, timeout: float = 10.0
) -> None:
    """Dial a neighbour until it answers. Each failure is logged once per distinct reason as
    ``unreachable`` (peer, address, reason, next retry); the first success after a failure as
    ``reachable``. Between tries it lifts py-libp2p's 60-second negative cache for this peer, which
    would otherwise fail every dial (ours and the runtime's) without trying."""
    import trio
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import PeerInfo

    host = transport.host
    pid = ID.from_base58(peer)
    delay = WATCH_FIRST_RETRY
    last_reason = ""
    while peer not in transport.peers():
        try:
            with trio.fail_after(timeout):
                await host.connect(PeerInfo(pid, host.get_peerstore().addrs(pid)))
        except trio.Cancelled:
            raise
        except Exception as exc:
            reason = dial_failure(exc)
            if reason != last_reason:
                log("unreachable", peer=peer, address=address, reason=reason, retry_in=delay)
                last_reason = reason
            await trio.sleep(delay)
            delay = min(delay * 2, WATCH_MAX_RETRY)
            with contextlib.suppress(Exception):
                host.get_network().unblock_peer(pid)
            continue
        break
    if last_reason:
        log("reachable", peer=peer, address=address)
