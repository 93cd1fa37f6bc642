"""What a node announces (wildcards expanded to interface addresses, never announced themselves), and why a
peer cannot be reached (dug out of py-libp2p's wrapped exceptions)."""

from __future__ import annotations

import ipaddress

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from phalanx.gossip.wire import Limits
from phalanx.node.addresses import (
    AddressError,
    InterfaceAddress,
    announced,
    check_announce,
    dial_failure,
    expand,
    interface_addresses,
    with_peer_id,
)
from phalanx.node.transport import open_libp2p_transport

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
interfaces = st.lists(
    st.one_of(
        st.builds(lambda a: InterfaceAddress(name="eth", family="ip4", address=a), ipv4),
        st.builds(lambda a: InterfaceAddress(name="eth", family="ip6", address=a), ipv6),
    ),
    max_size=6,
)
ports = st.integers(min_value=1, max_value=65535)
listens = st.lists(
    st.one_of(
        st.builds(lambda p: f"/ip4/0.0.0.0/tcp/{p}", ports),
        st.builds(lambda p: f"/ip6/::/tcp/{p}", ports),
        st.builds(lambda a, p: f"/ip4/{a}/tcp/{p}", ipv4.filter(lambda a: a != "0.0.0.0"), ports),
    ),
    min_size=1,
    max_size=4,
)


@given(listen=listens, ifaces=interfaces)
def test_expand_never_announces_a_wildcard_and_keeps_concrete_addresses(
    listen: list[str], ifaces: list[InterfaceAddress]
) -> None:
    out = expand(listen, ifaces)
    hosts = [ipaddress.ip_address(a.split("/")[2]) for a in out]
    assert not any(h.is_unspecified for h in hosts)
    assert len(out) == len(set(out))
    for addr in listen:
        if "/0.0.0.0/" not in addr and "/::/" not in addr:
            assert addr in out
    # every expanded address is an interface address of its family, on the wildcard's port
    wild_ports = {a.rsplit("/", 1)[1] for a in listen if "/0.0.0.0/" in a or "/::/" in a}
    ours = {(i.family, str(ipaddress.ip_address(i.address))) for i in ifaces}
    for addr in set(out) - set(listen):
        family, host, _, port = addr.split("/")[1:5]
        assert (family, host) in ours and port in wild_ports


def test_loopback_only_when_nothing_else_and_no_link_local() -> None:
    lo = InterfaceAddress(name="lo", family="ip4", address="127.0.0.1")
    eth = InterfaceAddress(name="eth0", family="ip4", address="10.1.2.3")
    ll = InterfaceAddress(name="eth0", family="ip6", address="fe80::1")
    lo6 = InterfaceAddress(name="lo", family="ip6", address="::1")
    assert expand(["/ip4/0.0.0.0/tcp/7"], [lo, eth]) == ["/ip4/10.1.2.3/tcp/7"]
    assert expand(["/ip4/0.0.0.0/tcp/7"], [lo]) == ["/ip4/127.0.0.1/tcp/7"]
    assert expand(["/ip6/::/tcp/7"], [ll, lo6]) == ["/ip6/::1/tcp/7"]
    assert expand(["/ip4/0.0.0.0/tcp/7/p2p/12D3KooWx"], [eth]) == ["/ip4/10.1.2.3/tcp/7"]


def test_announce_replaces_listen_and_refuses_wildcards() -> None:
    assert announced(["/ip4/0.0.0.0/tcp/1"], ["/dns4/a.example/tcp/9", "/dns4/a.example/tcp/9"]) == [
        "/dns4/a.example/tcp/9"
    ]
    assert with_peer_id(["/ip4/1.2.3.4/tcp/5/p2p/OLD"], "NEW") == ["/ip4/1.2.3.4/tcp/5/p2p/NEW"]
    for bad in ("/ip4/0.0.0.0/tcp/1", "/ip6/::/tcp/1", "/ip6/0::0/tcp/1"):
        with pytest.raises(AddressError, match="wildcard"):
            check_announce(bad)
    with pytest.raises(AddressError, match="bad announce multiaddr"):
        check_announce("/ip4/nonsense")


def test_this_host_has_interface_addresses() -> None:
    found = interface_addresses()
    assert any(a.family == "ip4" and a.address == "127.0.0.1" for a in found)


@pytest.mark.network
async def test_dial_failure_names_the_reason() -> None:
    """A refused port and a peer id that does not match the node at that address, through real dials."""
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import PeerInfo

    limits = Limits(dim=4)
    async with (
        open_libp2p_transport(create_new_key_pair(), limits=limits) as a,
        open_libp2p_transport(create_new_key_pair(), limits=limits) as b,
    ):
        real = b.listen_addresses()[0].split("/p2p/")[0]
        for addr, reason in (("/ip4/127.0.0.1/tcp/1", "connection refused"), (real, "peer id mismatch")):
            # a fresh peer id each time: py-libp2p refuses to redial a failed peer for 60 s
            stranger = ID.from_pubkey(create_new_key_pair().public_key)
            a.add_address(f"{addr}/p2p/{stranger.to_base58()}")
            with pytest.raises(Exception) as info:
                with trio.fail_after(10):
                    await a.host.connect(PeerInfo(stranger, a.host.get_peerstore().addrs(stranger)))
            assert reason in dial_failure(info.value), dial_failure(info.value)
            # a second dial at once hits py-libp2p's negative cache; the reason says so
            with pytest.raises(Exception) as again:
                await a.host.connect(PeerInfo(stranger, a.host.get_peerstore().addrs(stranger)))
            assert "60 s" in dial_failure(again.value)
