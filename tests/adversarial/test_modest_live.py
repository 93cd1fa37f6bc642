"""The red team against a live MoDeST network of real node processes: each attack of issue 13 on MoDeST,
sent by an outsider libp2p host with a fresh key (never a member) to every node. The network keeps
completing rounds at its rate, every node counts the message (and strikes the sender where the protocol
penalises it), accuracy is not poisoned, and no node's RSS grows.

Before the defences (signed records, sender checks, witnessed rounds) each of these halted the network
(the pong, the eviction and the 5,000 fake ids) or poisoned every node (the pushed aggregate), and
none was counted; see docs/security.md."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from phalanx.gossip.identity import Signer
from phalanx.gossip.wire import Limits
from phalanx.node.transport import open_libp2p_transport

from .harness import DIM
from .live import AHEAD, LiveNetwork, attack_bodies, modest_network, send_to_all

pytestmark = [pytest.mark.network, pytest.mark.slow]

# what each attack must leave in every node's protocol counters, and whether it is a strike
COUNTED = {
    "modest-pong": ("rejected_unsolicited", False),  # answers nobody asked for count, but are not news
    "modest-evict": ("rejected_unsolicited", True),
    "modest-fake-ids": ("rejected_unsolicited", True),
    "modest-aggregate": ("rejected_not_sampled", True),
    "modest-trained": ("rejected_not_sampled", True),
}
ROUNDS = 4  # rounds measured before and after each attack
# a halted network never completes them; a live one takes well under a second, or a few seconds when one
# of its pings times out (MoDeST replaces a silent candidate after ping_timeout) on a loaded machine
MAX_SECONDS = 30.0
MAX_RSS_GROWTH = 50.0  # MB, per node


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveNetwork]:
    with modest_network(tmp_path_factory.mktemp("modest-live")) as net:
        yield net


def counter(status: dict[str, object], name: str) -> float:
    counters = status.get("protocol_counters", {})
    return float(counters.get(name, 0)) if isinstance(counters, dict) else 0.0


@pytest.mark.parametrize("attack", list(COUNTED))
async def test_the_modest_network_holds(attack: str, network: LiveNetwork) -> None:
    name, struck = COUNTED[attack]
    await network.rounds_take(ROUNDS, timeout=30)
    before = [await n.status() for n in network.nodes]
    rss_before = [n.rss_mb() for n in network.nodes]
    acc_round = network.round
    acc_before = network.worst_accuracy(acc_round - ROUNDS)
    async with open_libp2p_transport(create_new_key_pair(), limits=Limits(dim=DIM), send_timeout=5.0) as host:
        for n in network.nodes:
            host.add_address(n.address)
        signer = Signer.from_seed(host.peer_id, b"\x42" * 32)
        await send_to_all(host, network, attack_bodies(network, signer)[attack], times=2)
        try:
            # past every round a pushed model named: a poisoned one has been reported by then
            await network.rounds_take(AHEAD + ROUNDS, timeout=MAX_SECONDS)
        except trio.TooSlowError:
            raise AssertionError(
                f"{attack}: the network stopped completing rounds (round {network.round})"
            ) from None
    after = [await n.status() for n in network.nodes]
    acc_after = network.worst_accuracy(acc_round + 1)
    assert acc_after >= min(acc_before, 0.9) - 0.2, f"{attack}: accuracy {acc_before:.3f} -> {acc_after:.3f}"
    for n, rss in zip(network.nodes, rss_before, strict=True):
        with contextlib.suppress(OSError):
            assert n.rss_mb() - rss < MAX_RSS_GROWTH, (
                f"{attack}: {n.name} RSS {rss:.0f} -> {n.rss_mb():.0f} MB"
            )
    for n, b, a in zip(network.nodes, before, after, strict=True):
        assert counter(a, name) >= counter(b, name) + 2, f"{attack}: {n.name} did not count it as {name}"
        strikes = [e for e in n.of("rejected") if e.get("peer") == host.peer_id]
        assert bool(strikes) == struck, f"{attack}: {n.name} struck the attacker {len(strikes)} times"
