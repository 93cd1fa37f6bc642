"""``Protocol.finished``: when the run is over for a node, in every protocol (the runners stop a node on it).

MoDeST's property: a node that is finished can leave at once and the run still delivers its final round to
every trainer of that round (the rule it replaces, "finished once it reported round ``rounds - 1``", lets an
aggregator that is also a trainer of the last round leave before its search reached the other trainers).
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from phalanx.gossip.dpsgd import DPSGD, DPSGDConfig
from phalanx.gossip.epidemic import Epidemic, EpidemicConfig
from phalanx.gossip.events import Action, PeerId
from phalanx.gossip.membership import View
from phalanx.gossip.modest import Modest, ModestConfig
from phalanx.gossip.protocol import Protocol
from phalanx.gossip.sampling import TRAINERS, sample
from tests.gossip.driver import Driver


class LeavingDriver(Driver):
    """The test driver, where a node goes away (silently) ``linger`` seconds after it says it is finished."""

    def __init__(self, protocols: dict[PeerId, Protocol], *, linger: float = 0.0) -> None:
        super().__init__(protocols)
        self.linger = linger
        self.finished_at: dict[PeerId, float] = {}

    def apply(self, node: PeerId, actions: list[Action]) -> None:
        super().apply(node, actions)
        if node not in self.finished_at and self.protocols[node].finished:
            self.finished_at[node] = self.now

    def run_leaving(self, until: float, step: float = 0.005) -> None:
        t, first = 0.0, True
        while t < until:
            t += step
            self.run(t, start=first)
            first = False
            for node, at in self.finished_at.items():
                if at + self.linger <= self.now:
                    self.alive.discard(node)
            if not self.heap:
                break  # nothing left to happen


def modest_network(n: int, config: ModestConfig) -> dict[PeerId, Protocol]:
    peers = [f"n{i:02d}" for i in range(n)]
    return {
        p: Modest(node=p, params=torch.zeros(3), peers=peers, config=config, rng=np.random.default_rng(i))
        for i, p in enumerate(peers)
    }


def test_the_default_is_never_finished() -> None:
    class Bare(Protocol):
        def start(self, now: float) -> list[Action]:
            return []

        def on_message(self, peer: PeerId, message: object, now: float) -> list[Action]:
            return []

        def on_timer(self, name: str, now: float) -> list[Action]:
            return []

        def on_training_done(self, event: object, now: float) -> list[Action]:  # type: ignore[override]
            return []

    assert Bare().finished is False


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(4, 12),
    s=st.integers(1, 3),
    a=st.integers(1, 2),
    rounds=st.integers(1, 4),
)
def test_modest_nodes_that_leave_once_finished_still_deliver_the_last_round(
    n: int, s: int, a: int, rounds: int
) -> None:
    nodes = modest_network(n, ModestConfig(s=s, a=a, rounds=rounds))
    d = LeavingDriver(nodes, linger=0.0)
    # a final round that takes the slow path (timeouts after the nodes it pinged left) can need more than
    # 30 virtual seconds (n=8, s=2, a=2, rounds=4 did); the run ends early once nothing is left to happen
    d.run_leaving(240)
    view = View("observer", sorted(nodes))
    reported = {k: {node for _, node, rc in d.completed if rc.round == k} for k in range(rounds)}
    assert {rc.round for _, _, rc in d.completed} == set(range(rounds))
    # the final round reached every trainer of round `rounds`, although finished nodes left at once (a
    # straggler's liveness guard, finding its aggregator gone, may hand the last round to more nodes)
    assert reported[rounds - 1] >= set(sample(view, rounds, s, inactivity=1000, role=TRAINERS))
    # whoever finished holds the last round; every trainer of the last round finished
    for node in d.finished_at:
        assert nodes[node].round >= rounds  # type: ignore[attr-defined]
    assert reported[rounds - 1] <= set(d.finished_at)


def test_a_modest_node_is_not_finished_while_its_final_search_is_pinging() -> None:
    nodes = modest_network(6, ModestConfig(s=2, a=1, rounds=2))
    d = LeavingDriver(nodes, linger=1e9)  # nobody leaves: look at the flags
    # a final round that takes the slow path (timeouts after the nodes it pinged left) can need more than
    # 30 virtual seconds (n=8, s=2, a=2, rounds=4 did); the run ends early once nothing is left to happen
    d.run_leaving(240)
    for node, protocol in nodes.items():
        searching = any(s.phase.value == "pinging" for s in protocol.searches.active.values())  # type: ignore[attr-defined]
        assert not (protocol.finished and searching), node
    assert not any(p.finished for p in modest_network(6, ModestConfig(s=2, a=1, rounds=0)).values())


def test_epidemic_and_dpsgd_finish_with_their_last_round() -> None:
    peers = [f"n{i}" for i in range(5)]
    el: dict[PeerId, Protocol] = {
        p: Epidemic(
            node=p,
            params=torch.zeros(3),
            peers=peers,
            config=EpidemicConfig(s=2, variant="local", rounds=3, round_timeout=0.5),
            rng=np.random.default_rng(i),
        )
        for i, p in enumerate(peers)
    }
    ring = {p: (peers[i - 1], peers[(i + 1) % 5]) for i, p in enumerate(peers)}
    dp: dict[PeerId, Protocol] = {
        p: DPSGD(DPSGDConfig(neighbours=ring[p], rounds=3, round_timeout=0.5), torch.zeros(3)) for p in peers
    }
    for protocols in (el, dp):
        d = LeavingDriver(protocols, linger=1e9)
        assert not any(p.finished for p in protocols.values())
        d.run(0.05)
        assert not any(p.finished for p in protocols.values())
        d.run(30, start=False)
        assert all(p.finished for p in protocols.values())
        # each finished exactly when it reported its last round
        for node, at in d.finished_at.items():
            last = max(t for t, n, rc in d.completed if n == node)
            assert at == last and max(rc.round for _, n, rc in d.completed if n == node) == 2
