"""The combine step D-PSGD calls: mixing weights, robust rules on [own, *received], non-finite rows."""

from __future__ import annotations

import pytest
import torch

from phalanx.gossip.aggregator import Combiner, accepted_params


def v(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_mean_is_weighted_mixing_and_missing_weight_stays_home() -> None:
    c = Combiner("mean")
    out = c(v(0, 0), {"a": v(4, 8)}, {"a": 0.25, "b": 0.25})
    assert torch.allclose(out, v(1, 2))


def test_robust_rule_sees_own_as_a_row() -> None:
    c = Combiner("median")
    out = c(v(0), {"a": v(10), "b": v(11)}, {})
    assert torch.allclose(out, v(10))


def test_gossip_rule_gets_own_and_weights() -> None:
    c = Combiner("clipped-gossip", {"tau": 1.0})
    out = c(v(0, 0), {"a": v(30, 40)}, {"a": 0.5})
    assert torch.allclose(out, v(0.3, 0.4))  # the pull of length 50 is clipped to 1, weighted 0.5


def test_non_finite_rows_are_dropped_first() -> None:
    c = Combiner("mean")
    out = c(v(0), {"a": v(float("nan")), "b": v(float("inf")), "c": v(4)}, {"a": 0.25, "b": 0.25, "c": 0.25})
    assert torch.allclose(out, v(1)) and c.dropped_nonfinite == 2
    huge = Combiner("median")
    assert torch.allclose(
        huge(v(1, 1), {"a": v(3e38, 3e38), "b": v(2, 2)}, {}), v(2, 2)
    )  # finite, sum overflows


def test_a_rule_that_cannot_run_keeps_own() -> None:
    c = Combiner("trimmed-mean", {"f": 2})
    assert torch.equal(c(v(7), {"a": v(1)}, {}), v(7))
    assert c.failures == 1


def test_names_and_generic_params() -> None:
    with pytest.raises(ValueError, match="unknown aggregation rule"):
        Combiner("nope")
    assert accepted_params("median", {"f": 2, "tau": 1.0}) == {}
    assert accepted_params("trimmed-mean", {"f": 2, "tau": 1.0}) == {"f": 2}
    assert accepted_params("median", {"bogus": 1}) == {"bogus": 1}  # left for the rule to reject by name


def test_robust_rule_without_own_row() -> None:
    c = Combiner("median", include_own=False)
    assert torch.allclose(c(v(0), {"a": v(10), "b": v(11), "c": v(12)}, {}), v(11))
