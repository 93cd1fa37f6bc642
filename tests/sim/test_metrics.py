"""The streaming metrics collector: consensus distance against a direct float64 computation."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from phalanx.sim.metrics import Metrics


def _engine(nodes: list[str]) -> SimpleNamespace:
    return SimpleNamespace(alive=set(nodes), alive_version=0, bytes_sent=0, messages_sent=0, protocols={})


def _collector(nodes: list[str], *, rounds: int) -> tuple[SimpleNamespace, Metrics]:
    """A Metrics over ``nodes`` (all honest, none evaluated) attached to a stand-in engine."""
    engine = _engine(nodes)
    metrics = Metrics(
        honest=nodes,
        eval_nodes=frozenset(),
        rounds=rounds,
        eval_every=10,
        evaluate=lambda p: (0.0, 0.0),
        start=0.0,
    )
    metrics.engine = engine  # type: ignore[assignment]
    return engine, metrics


def _consensus64(models: list[torch.Tensor]) -> float:
    stack = torch.stack(models).double()
    return float((stack - stack.mean(0)).pow(2).sum(1).mean().sqrt())


@pytest.mark.parametrize(("offset", "spread"), [(0.0, 1.0), (30.0, 1e-3), (1e4, 1e-2), (0.0, 1e20)])
def test_consensus_distance_matches_the_direct_computation(offset: float, spread: float) -> None:
    # Models that agree to many digits (a large common offset, a tiny spread) are where raw sums of
    # models lose everything to cancellation; huge spreads overflow float32 squares.
    gen = torch.Generator().manual_seed(0)
    nodes = [str(i) for i in range(13)]
    engine, metrics = _collector(nodes, rounds=3)
    expected = []
    for r in range(3):
        base = offset + torch.randn(5000, generator=gen)
        models = [base + spread * (r + 1) * torch.randn(5000, generator=gen) for _ in nodes]
        expected.append(_consensus64(models))
        for node, x in zip(nodes, models):
            metrics.on_round(engine, node, SimpleNamespace(round=r, params=x), 0.0)  # type: ignore[arg-type]
    metrics.finish()
    got = [row["consensus"] for row in metrics.rows]
    assert [row["round"] for row in metrics.rows] == [0, 1, 2]
    for g, e in zip(got, expected):
        assert math.isfinite(g)
        assert g == pytest.approx(e, rel=1e-5)


def test_consensus_of_identical_models_is_zero_and_one_report_is_zero() -> None:
    nodes = ["0", "1", "2"]
    engine, metrics = _collector(nodes, rounds=2)
    x = torch.randn(100)
    for node in nodes:
        metrics.on_round(engine, node, SimpleNamespace(round=0, params=x.clone()), 0.0)  # type: ignore[arg-type]
    metrics.on_round(engine, "0", SimpleNamespace(round=1, params=x), 0.0)  # type: ignore[arg-type]
    metrics.finish()
    assert [row["consensus"] for row in metrics.rows] == [0.0, 0.0]
    assert [row["honest_reported"] for row in metrics.rows] == [3, 1]
