"""Circuit Relay v2 in the libp2p transport (node/relay.py), on loopback: B reserves a slot on R, A knows B
only by its ``/p2p-circuit`` address and sends it a frame through R. Across hosts that cannot reach each
other: tests/netbed/test_relay.py."""

from __future__ import annotations

import pytest
import trio

from phalanx.gossip.wire import Limits
from phalanx.node.transport import Frame, Libp2pTransport, TransportError, open_libp2p_transport

pytestmark = pytest.mark.network
LIMITS = Limits(dim=16)


def _key() -> object:
    from libp2p.crypto.ed25519 import create_new_key_pair

    return create_new_key_pair()


async def _frame_from(transport: Libp2pTransport, peer: str) -> bytes:
    with trio.fail_after(10):
        while True:
            event = await transport.receive()
            if isinstance(event, Frame) and event.peer == peer:
                return event.body


async def test_a_sends_to_b_through_the_relay_it_reserved_on() -> None:
    async with open_libp2p_transport(_key(), limits=LIMITS, relay_service=True) as r:
        r_addr = r.listen_addresses()[0]
        async with (
            open_libp2p_transport(_key(), limits=LIMITS, relay_via=[r_addr]) as b,
            open_libp2p_transport(_key(), limits=LIMITS, relay_dial=True) as a,
        ):
            circuit = f"{r_addr}/p2p-circuit/p2p/{b.peer_id}"
            assert circuit in b.listen_addresses()  # B announces its relayed address
            assert a.add_address(circuit) == b.peer_id
            await a.send(b.peer_id, b"through the relay")
            assert await _frame_from(b, a.peer_id) == b"through the relay"
            from libp2p.peer.id import ID

            (conn,) = a.host.get_network().get_connections(ID.from_base58(b.peer_id))
            assert any("/p2p-circuit" in str(x) for x in conn.get_transport_addresses())
            # and back over the same relayed connection
            await b.send(a.peer_id, b"and back")
            assert await _frame_from(a, b.peer_id) == b"and back"


async def test_without_the_relay_transport_a_circuit_address_cannot_be_dialled() -> None:
    async with open_libp2p_transport(_key(), limits=LIMITS, relay_service=True) as r:
        r_addr = r.listen_addresses()[0]
        async with (
            open_libp2p_transport(_key(), limits=LIMITS, relay_via=[r_addr]) as b,
            open_libp2p_transport(_key(), limits=LIMITS) as a,
        ):
            a.add_address(f"{r_addr}/p2p-circuit/p2p/{b.peer_id}")
            with pytest.raises(TransportError):
                await a.send(b.peer_id, b"no route")


async def test_a_circuit_through_a_relay_b_never_reserved_on_fails() -> None:
    async with open_libp2p_transport(_key(), limits=LIMITS, relay_service=True) as r:
        r_addr = r.listen_addresses()[0]
        async with (
            open_libp2p_transport(_key(), limits=LIMITS) as b,
            open_libp2p_transport(_key(), limits=LIMITS, relay_dial=True) as a,
        ):
            a.add_address(f"{r_addr}/p2p-circuit/p2p/{b.peer_id}")
            with pytest.raises(TransportError):
                await a.send(b.peer_id, b"no reservation")


def test_relay_flags_reach_the_config_and_a_circuit_relay_address_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    from phalanx.cli import build_parser, main
    from phalanx.node_cmd import config_from_args

    relay = "/ip4/10.0.0.2/tcp/4001/p2p/12D3KooWHJAHyAPh14CyXoYXwkMX2Q4WPSpjwKu77SCCsmWs4VAP"
    args = build_parser().parse_args(["node", "run", "--relay-service", "--relay", relay])
    config = config_from_args(args)
    assert config.relay_service and config.relay == (relay,)
    peer = "12D3KooWPUYRLKp1RNDZ6FhyB9rQLrCRwy53Cvxa13bwDNA7gZHc"
    code = main(["node", "run", "--data-dir", str(tmp_path), "--relay", f"{relay}/p2p-circuit/p2p/{peer}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "circuit address" in err[0], err


async def test_reserving_on_a_node_that_serves_no_relay_fails_at_once() -> None:
    from phalanx.node.relay import RelayError

    async with open_libp2p_transport(_key(), limits=LIMITS) as plain:
        with trio.fail_after(10):  # at once: not the 30 s an unreachable relay gets
            with pytest.raises(BaseException) as caught:
                async with open_libp2p_transport(
                    _key(), limits=LIMITS, relay_via=[plain.listen_addresses()[0]]
                ):
                    pass
        from phalanx.node.app import leaves_of

        leaves = leaves_of(caught.value)
        assert any(isinstance(e, RelayError) and "serves no relay" in str(e) for e in leaves), leaves
