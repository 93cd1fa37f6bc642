"""The red team against a live MoDeST network of real node processes: each attack of issue 13 on MoDeST,
sent twice by an outsider libp2p host with a fresh key (never a member) to every node. The network keeps
completing rounds, every node counts the message (and strikes the sender where the protocol penalises
it), the worst accuracy any node reports is not poisoned, and no node's RSS grows (``live.py``).

Before the defences (signed records, sender checks, witnessed rounds) the pong, the eviction and the
5,000 fake ids halted the network and the pushed aggregate poisoned it, and none was counted; with the
sender checks switched off, the pushed aggregate takes every node's reported accuracy to 0.11 and the
pushed trained models are neither counted nor struck (docs/security.md)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .live import COUNTED, LiveNetwork, half_frames, modest_network, run_modest_attack

pytestmark = [pytest.mark.network, pytest.mark.slow]


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveNetwork]:
    with modest_network(tmp_path_factory.mktemp("modest-live")) as net:
        yield net


@pytest.mark.parametrize("attack", list(COUNTED))
async def test_the_modest_network_holds(attack: str, network: LiveNetwork) -> None:
    outcome = await run_modest_attack(network, attack)
    assert not outcome.problems, outcome


async def test_many_fresh_keys_sending_half_a_frame_hold_only_the_strangers_pool(
    network: LiveNetwork,
) -> None:
    growth, problems = await half_frames(network)
    assert not problems, (growth, problems)
