"""rfa-gossip where the simulator and the nodes use it: through the gossip Combiner (own vector, no
mixing weights), and in a simulated run."""

from __future__ import annotations

import torch

from phalanx.aggregation import aggregate
from phalanx.gossip.aggregator import Combiner
from phalanx.sim.config import SimConfig
from phalanx.sim.experiment import plan

from .conftest import random_rows


def test_combiner_passes_own_and_the_received_rows() -> None:
    x = random_rows(4, 4, 6)
    own, received = x[0], {f"p{i}": x[i] for i in (3, 1, 2)}
    combiner = Combiner("rfa-gossip", {"nu": 0.5, "iterations": 3, "f": 1, "tau": 2.0})
    out = combiner(own, received, {peer: 0.2 for peer in received})
    expected = aggregate("rfa-gossip", x[1:], own=own, nu=0.5, iterations=3)
    torch.testing.assert_close(out, expected)
    assert combiner.failures == 0


def test_starts_from_own_not_the_origin() -> None:
    """One step from own with nu above every distance is the plain mean of own and the rows; far from
    the origin the origin start (the authors' RFA) gives another point after one step."""
    x = random_rows(5, 5, 3, offset=100.0)
    out = aggregate("rfa-gossip", x[1:], own=x[0], nu=1e6, iterations=1)
    torch.testing.assert_close(out, x.mean(dim=0))
    moved = aggregate("rfa-gossip", x[1:] + 7.0, own=x[0] + 7.0, nu=0.1, iterations=8)
    torch.testing.assert_close(moved, aggregate("rfa-gossip", x[1:], own=x[0], nu=0.1, iterations=8) + 7.0)


def test_simulator_runs_it() -> None:
    from phalanx.sim.experiment import run

    config = SimConfig(
        nodes=6, rounds=2, topology="ring", dataset="blobs", rule="rfa-gossip", rule_params={"iterations": 2}
    )
    result = run(plan(config))
    assert result.rows[-1]["acc_mean"] is not None
    assert result.rows[-1]["counters"].get("rule_failures", 0) == 0
