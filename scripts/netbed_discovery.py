"""Which of py-libp2p's discovery and NAT-traversal parts work between two hosts? Tried on the namespace bed.

Three hosts on one bridge (tests/netbed/netns.py), each a bare py-libp2p host (TCP, Noise, yamux):

- A (h0) serves: rendezvous point, Kademlia DHT in server mode, Circuit Relay v2 hop, AutoNAT; it announces
  its 10.x address (phalanx's addrs_factory).
- B (h1) joins through A only: registers under a rendezvous namespace, adds A to its DHT, reserves a relay slot
  at A, asks A for an AutoNAT verdict, runs mDNS. With ``--hidden`` B listens on its own loopback, so no other
  host can dial it (the NAT case) and only the relay can carry a connection to it.
- C (h2) knows only A's address and B's peer id, and tries every way to learn B's addresses and reach B.

Each host prints one JSON line per step: what worked, or the exception. Needs root and iproute2.

    .venv/bin/python scripts/netbed_discovery.py            # B dialable
    .venv/bin/python scripts/netbed_discovery.py --hidden   # B not dialable: relay is the only way
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PORT = 4001
NAMESPACE = "phalanx-probe"


def key(i: int) -> Any:
    from libp2p.crypto.ed25519 import create_new_key_pair

    return create_new_key_pair(bytes([i + 1]) * 32)


def peer(i: int) -> Any:
    from libp2p.peer.id import ID

    return ID.from_pubkey(key(i).public_key)


def say(step: str, ok: bool, **fields: Any) -> None:
    print(json.dumps({"step": step, "ok": ok, **fields}, default=str), flush=True)


def why(exc: BaseException) -> str:
    from phalanx.node.addresses import dial_failure

    return f"{type(exc).__name__}: {dial_failure(exc)}"


async def role(name: str, addr_a: str, hidden: bool, mdns: bool, seconds: float) -> None:
    import multiaddr
    import trio
    from libp2p import new_host
    from libp2p.discovery.rendezvous import RendezvousDiscovery, RendezvousService
    from libp2p.host.autonat.autonat import AutoNATService
    from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
    from libp2p.peer.peerinfo import PeerInfo
    from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
    from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID, STOP_PROTOCOL_ID, CircuitV2Protocol
    from libp2p.relay.circuit_v2.resources import RelayLimits
    from libp2p.relay.circuit_v2.transport import CircuitV2Transport
    from libp2p.tools.anyio_service import background_trio_service

    from phalanx.node.addresses import addrs_factory

    index = "abc".index(name)
    host = new_host(key_pair=key(index), addrs_factory=addrs_factory(), enable_mDNS=mdns and name != "a")
    listen = "/ip4/127.0.0.1/tcp/4001" if (name == "b" and hidden) else f"/ip4/0.0.0.0/tcp/{PORT}"
    a_info = PeerInfo(peer(0), [multiaddr.Multiaddr(addr_a)])
    limits = RelayLimits(duration=600, data=1 << 30, max_circuit_conns=8, max_reservations=8)
    relay = CircuitV2Protocol(host, limits=limits, allow_hop=name == "a")
    host.set_stream_handler(PROTOCOL_ID, relay._handle_hop_stream)
    host.set_stream_handler(STOP_PROTOCOL_ID, relay._handle_stop_stream)
    roles = (
        RelayRole.HOP | RelayRole.STOP | RelayRole.CLIENT
        if name == "a"
        else RelayRole.STOP | RelayRole.CLIENT
    )
    dht = KadDHT(host, DHTMode.SERVER)
    autonat = AutoNATService(host, serve=name == "a", confirmations=1)
    from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol

    dcutr = DCUtRProtocol(host) if name != "a" else None
    if name == "a":
        RendezvousService(host)

    async def step(label: str, fn: Any, timeout: float = 10.0) -> Any:
        try:
            with trio.fail_after(timeout):
                return await fn()
        except Exception as exc:
            say(label, False, error=why(exc))
            return None

    async with host.run([multiaddr.Multiaddr(listen)]), trio.open_nursery() as nursery:
        say("listening", True, host=name, addrs=[str(a) for a in host.get_addrs()])
        async with (
            background_trio_service(relay),
            background_trio_service(dht),
            contextlib.AsyncExitStack() as stack,
        ):
            if dcutr is not None:
                await stack.enter_async_context(background_trio_service(dcutr))
            transport = CircuitV2Transport(host, relay, RelayConfig(roles=roles, limits=limits))
            if name == "a":
                await trio.sleep(seconds)
                nursery.cancel_scope.cancel()
                return
            await trio.sleep(1 if name == "b" else 4)  # A first, then B, then C (separate processes)

            async def dial_b(label: str) -> None:
                host.get_network().unblock_peer(peer(1))
                addrs = host.get_peerstore().addrs(peer(1))
                if await step(label, lambda: host.connect(PeerInfo(peer(1), addrs))) is not None or (
                    host.get_network().get_connections(peer(1))
                ):
                    say(label, True)
                for conn in list(host.get_network().get_connections(peer(1))):
                    await conn.close()

            if (
                await step("connect to A", lambda: host.connect(a_info)) is None
                and not host.get_network().connections
            ):
                nursery.cancel_scope.cancel()
                return
            # identify: what A told us about itself
            await trio.sleep(0.5)
            a_addrs = [str(x) for x in host.get_peerstore().addrs(peer(0))]
            say("identify: A's addresses as learnt", True, addrs=a_addrs)
            with_protocols = await step("identify: A's protocols", lambda: _protocols(host, peer(0)))
            if with_protocols is not None:
                say("identify: A's protocols", True, protocols=sorted(with_protocols)[:12])
            rdv = RendezvousDiscovery(host, peer(0))
            if name == "b":
                ttl = await step("rendezvous register", lambda: rdv.advertise(NAMESPACE))
                if ttl is not None:
                    say("rendezvous register", True, ttl=ttl)
                added = await step("dht add A", lambda: dht.add_peer(peer(0)))
                say(
                    "dht add A",
                    bool(added),
                    size=dht.routing_table.size() if hasattr(dht.routing_table, "size") else None,
                )

                async def reserve() -> bool:
                    stream = await host.new_stream(peer(0), [PROTOCOL_ID])
                    return bool(await transport.reserve(stream, peer(0), nursery))

                ok = await step("relay reserve at A", reserve)
                if ok is not None:
                    say("relay reserve at A", bool(ok))
                status = await step("autonat via A", lambda: autonat.check_reachability([peer(0)]))
                if status is not None:
                    say(
                        "autonat via A",
                        True,
                        status={0: "unknown", 1: "public", 2: "private"}.get(status, status),
                    )
                await trio.sleep(seconds)
                nursery.cancel_scope.cancel()
                return
            # C: learn B's addresses, each way on its own (the peerstore is shared: mDNS first, then the DHT
            # before rendezvous, so that no step reads what an earlier one stored)
            if mdns:
                with trio.move_on_after(8):
                    while not host.get_peerstore().addrs(peer(1)):
                        await trio.sleep(0.2)
                known = [str(x) for x in host.get_peerstore().addrs(peer(1))]
                say("mdns: B's addresses", bool(known), addrs=known)
                await dial_b("dial B at its mDNS addresses")
                nursery.cancel_scope.cancel()
                return
            await step("dht add A", lambda: dht.add_peer(peer(0)))
            info = await step("dht find_peer B", lambda: dht.find_peer(peer(1)))
            if info is not None:
                say("dht find_peer B", True, addrs=[str(x) for x in info.addrs])
                await dial_b("dial B at its DHT addresses")
            host.get_peerstore().clear_addrs(peer(1))
            found = await step("rendezvous discover B", lambda: rdv.find_all_peers(NAMESPACE))
            if found is not None:
                b = [p for p in found if p.peer_id == peer(1)]
                say("rendezvous discover B", bool(b), addrs=[str(x) for p in b for x in p.addrs])
                for p in b:
                    host.get_peerstore().add_addrs(p.peer_id, p.addrs, 600)
                await dial_b("dial B at its rendezvous addresses")
            circuit = multiaddr.Multiaddr(f"{addr_a}/p2p-circuit/p2p/{peer(1)}")
            conn = await step("relay dial B via A", lambda: transport.dial(circuit), timeout=15)
            if conn is not None:
                say(
                    "relay dial B via A",
                    True,
                    conn=type(conn).__name__,
                    addrs=[str(a) for a in _remote(conn)],
                )

                async def ping() -> float:
                    from libp2p.host.ping import ID as PING

                    stream = await host.new_stream(peer(1), [PING])
                    t0 = time.monotonic()
                    payload = bytes(range(32))
                    await stream.write(payload)
                    echoed = b""
                    while len(echoed) < 32:
                        echoed += await stream.read(32 - len(echoed))
                    if echoed != payload:
                        raise ValueError("ping echoed other bytes")
                    return time.monotonic() - t0

                rtt = await step("ping B through the relay", ping)
                if rtt is not None:
                    say("ping B through the relay", True, rtt_ms=round(rtt * 1000, 2))
                assert dcutr is not None
                punched = await step(
                    "dcutr: upgrade the relayed connection to B",
                    lambda: dcutr.initiate_hole_punch(peer(1)),
                    timeout=30,
                )
                conns = [str(a) for c in host.get_network().get_connections(peer(1)) for a in _remote(c)]
                say("dcutr: upgrade the relayed connection to B", bool(punched), connections=conns)
        nursery.cancel_scope.cancel()


def _remote(conn: Any) -> list[Any]:
    try:
        return list(conn.get_transport_addresses())
    except Exception:
        return []


async def _protocols(host: Any, pid: Any) -> list[str]:
    return [str(p) for p in host.get_peerstore().get_protocols(pid)]


def drive(hidden: bool, mdns: bool) -> int:
    from tests.netbed.netns import NetBed, unavailable

    why_not = unavailable()
    if why_not:
        print(f"netbed_discovery: error: {why_not}", file=sys.stderr)
        return 2
    with NetBed(3) as bed:
        addr_a = f"/ip4/{bed.address(0)}/tcp/{PORT}/p2p/{peer(0)}"
        procs = []
        try:
            for i, name in enumerate("abc"):
                argv = [sys.executable, __file__, "--role", name, "--addr-a", addr_a, "--seconds", "25"]
                procs.append(
                    subprocess.Popen(
                        bed.command(
                            i, argv + (["--hidden"] if hidden else []) + (["--mdns"] if mdns else [])
                        ),
                        stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL,
                        text=True,
                    )
                )
            outs = {}
            for name, proc in zip("abc", procs, strict=True):
                if name == "a":
                    continue
                try:
                    outs[name] = proc.communicate(timeout=120)[0]
                except subprocess.TimeoutExpired:
                    proc.kill()
                    outs[name] = proc.communicate()[0]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
    print(
        f"B {'hidden (listens on its loopback)' if hidden else 'dialable'}{', mDNS only' if mdns else ''}; A at {addr_a}"
    )
    for name in "bc":
        for line in outs[name].splitlines():
            print(f"{name.upper()}: {line}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--role", choices=["a", "b", "c"])
    p.add_argument("--addr-a", default="")
    p.add_argument("--hidden", action="store_true")
    p.add_argument("--mdns", action="store_true", help="only mDNS: B and C run it, C looks for B by it")
    p.add_argument("--seconds", type=float, default=25)
    args = p.parse_args()
    if args.role:
        import logging

        import trio

        logging.getLogger("libp2p").setLevel(logging.CRITICAL)
        trio.run(role, args.role, args.addr_a, args.hidden, args.mdns, args.seconds)
        return 0
    return drive(args.hidden, args.mdns)


if __name__ == "__main__":
    sys.exit(main())
