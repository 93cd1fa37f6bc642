"""Bad input: one error type naming the rule, n, f and what is required; the registry's
strictness; tolerance queries; composition with pre-aggregators."""

from __future__ import annotations

import pytest
import torch

from phalanx.aggregation import (
    ATTACKS,
    PRE_AGGREGATORS,
    PRE_PARAMS,
    REQUIREMENTS,
    RULE_PARAMS,
    RULES,
    AggregationError,
    aggregate,
    finite_rows,
    max_f,
    pre_aggregate,
    requirement,
)

from .conftest import random_rows

TAKES_F = sorted(name for name in RULES if "f" in RULE_PARAMS[name])


def _call(name: str, x: torch.Tensor, **params: object) -> torch.Tensor:
    takes = RULE_PARAMS[name]
    if "own" in takes:
        params.setdefault("own", torch.zeros(x.shape[1], dtype=x.dtype) if x.dim() == 2 else torch.zeros(1))
    if "weights" in takes and "own" in takes:
        params.setdefault("weights", torch.full((max(x.shape[0], 1),), 0.1, dtype=torch.float64))
    if "tau" in takes:
        params.setdefault("tau", 1.0)
    return aggregate(name, x, **params)


def test_every_rule_and_pre_aggregator_has_a_requirement() -> None:
    assert set(RULES) | set(PRE_AGGREGATORS) <= set(REQUIREMENTS)


@pytest.mark.parametrize("name", TAKES_F)
def test_too_few_rows_for_f_names_rule_n_f_and_need(name: str) -> None:
    n = 3
    f = max_f(name, n) + 1
    with pytest.raises(AggregationError) as err:
        _call(name, random_rows(0, n, 4), f=f)
    message = str(err.value)
    assert message.startswith(f"{name}: needs ")
    assert f"n={n}" in message and f"f={f}" in message


@pytest.mark.parametrize(
    ("name", "n", "f", "need"),
    [
        ("trimmed-mean", 4, 2, "n > 2f"),
        ("krum", 6, 2, "n > 2f + 2"),
        ("bulyan", 10, 2, "n >= 4f + 3"),
        ("mean", 5, 1, "f = 0"),
    ],
)
def test_requirement_messages(name: str, n: int, f: int, need: str) -> None:
    with pytest.raises(AggregationError) as err:
        requirement(name, n, f)
    assert str(err.value).startswith(f"{name}: needs {need}") and f"got n={n}, f={f}" in str(err.value)


def test_max_f() -> None:
    assert max_f("krum", 10) == 3
    assert max_f("bulyan", 10) == 1
    assert max_f("bulyan", 35) == 8
    assert max_f("trimmed-mean", 10) == 4
    assert max_f("median", 9) == 4
    assert max_f("mean", 5) == 0
    assert max_f("krum", 2) == -1
    assert max_f("monna", 4) == 2
    with pytest.raises(AggregationError, match="unknown rule"):
        max_f("nope", 3)
    with pytest.raises(AggregationError, match="n >= 1"):
        requirement("krum", 0, 0)
    with pytest.raises(AggregationError, match="f must be"):
        requirement("krum", 5, -1)


@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(5),
        torch.zeros(2, 3, 4),
        torch.zeros(0, 3),
        torch.zeros(3, 0),
        torch.zeros(4, 3, dtype=torch.int64),
    ],
    ids=["1d", "3d", "no-rows", "no-columns", "integers"],
)
def test_bad_shapes_and_dtypes(name: str, bad: torch.Tensor) -> None:
    with pytest.raises(AggregationError, match=f"^{name}: "):
        _call(name, bad, **({"f": 0} if "f" in RULE_PARAMS[name] else {}))


@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_rows_are_refused(name: str, value: float) -> None:
    x = random_rows(1, 9, 4)
    x[3, 1] = value
    params = {"f": 1} if "f" in RULE_PARAMS[name] else {}
    with pytest.raises(AggregationError, match=rf"^{name}: rows \[3\] are not finite"):
        _call(name, x, **params)
    kept = x[finite_rows(x)]
    assert kept.shape == (8, 4)
    assert bool(torch.isfinite(_call(name, kept, **params)).all())


def test_finite_rows_mask() -> None:
    x = random_rows(1, 5, 3)
    x[1, 0] = float("nan")
    x[4, 2] = float("inf")
    x[2, 1] = 1e38
    assert finite_rows(x).tolist() == [True, False, True, True, False]
    assert finite_rows(x.float()).tolist() == [True, False, True, True, False]
    with pytest.raises(AggregationError):
        finite_rows(torch.zeros(3))


@pytest.mark.parametrize(
    "name", ["monna", "clipped-gossip", "adaptive-clipped-gossip", "cs-plus", "gts", "rfa-gossip"]
)
def test_own_and_weights_are_checked(name: str) -> None:
    x = random_rows(2, 5, 3)
    f = {"f": 1} if "f" in RULE_PARAMS[name] else {}
    with pytest.raises(AggregationError, match=rf"{name}: own must have shape \(3,\)"):
        _call(name, x, own=torch.zeros(4), **f)
    with pytest.raises(AggregationError, match=f"{name}: own vector is not finite"):
        _call(name, x, own=torch.tensor([0.0, float("nan"), 0.0], dtype=torch.float64), **f)
    with pytest.raises(AggregationError, match=f"{name}: own must match"):
        _call(name, x, own=torch.zeros(3, dtype=torch.float32), **f)
    if "weights" in RULE_PARAMS[name]:
        with pytest.raises(AggregationError, match=r"weights must have shape \(5,\)"):
            _call(name, x, weights=torch.full((4,), 0.1), **f)
        with pytest.raises(AggregationError, match="sum to <= 1"):
            _call(name, x, weights=torch.full((5,), 0.3), **f)
        with pytest.raises(AggregationError, match=">= 0"):
            _call(name, x, weights=torch.tensor([0.1, -0.1, 0.1, 0.1, 0.1]), **f)


def test_parameter_checks() -> None:
    x = random_rows(3, 6, 2)
    with pytest.raises(AggregationError, match="multi-krum: needs 1 <= m <= n"):
        aggregate("multi-krum", x, f=1, m=7)
    with pytest.raises(AggregationError, match="tau must be a number > 0"):
        aggregate("centered-clipping", x, tau=0.0)
    with pytest.raises(AggregationError, match="iterations must be an integer >= 1"):
        aggregate("geometric-median", x, iterations=0)
    with pytest.raises(AggregationError, match="start must have shape"):
        aggregate("centered-clipping", x, tau=1.0, start=torch.zeros(3, dtype=torch.float64))
    with pytest.raises(AggregationError, match="weights must have a positive sum"):
        aggregate("mean", x, weights=torch.zeros(6))
    with pytest.raises(AggregationError, match="bucket size"):
        pre_aggregate(x, ["bucketing"], s=0)
    with pytest.raises(AggregationError, match="clipping: tau"):
        pre_aggregate(x, ["clipping"], tau=-1.0)


def test_registry_is_strict() -> None:
    x = random_rows(4, 7, 3)
    with pytest.raises(AggregationError, match="unknown rule 'nope'"):
        aggregate("nope", x)
    with pytest.raises(AggregationError, match=r"krum: unknown parameter.*tau.*it takes f"):
        aggregate("krum", x, f=1, tau=2.0)
    with pytest.raises(AggregationError, match=r"krum: missing parameter.*f"):
        aggregate("krum", x)
    with pytest.raises(AggregationError, match="unknown pre-aggregator 'nope'"):
        aggregate("krum", x, f=1, pre=["nope"])
    with pytest.raises(AggregationError, match=r"nnm: unknown parameter.*s"):
        aggregate("krum", x, f=1, pre=[("nnm", {"s": 2})])
    with pytest.raises(AggregationError, match=r"bucketing: missing parameter.*s"):
        aggregate("krum", x, f=1, pre=["bucketing"])
    with pytest.raises(AggregationError, match=r"clipping: missing parameter.*tau"):
        pre_aggregate(x, ["clipping"])


def test_params_tables_match_signatures() -> None:
    assert RULE_PARAMS["krum"] == {"f"}
    assert RULE_PARAMS["cs-plus"] == {"own", "weights", "f"}
    assert RULE_PARAMS["centered-clipping"] == {"tau", "iterations", "start"}
    assert PRE_PARAMS["bucketing"] == {"s", "seed"}
    assert "dissensus" in ATTACKS


def test_pre_aggregators_compose() -> None:
    x = random_rows(5, 11, 4)
    nnm = pre_aggregate(x, ["nnm"], f=2)
    torch.testing.assert_close(aggregate("krum", x, f=2, pre=["nnm"]), aggregate("krum", nnm, f=2))
    clipped = pre_aggregate(x, [("clipping", {"tau": 0.5})])
    assert float(torch.linalg.vector_norm(clipped, dim=1).max()) <= 0.5 + 1e-12
    both = aggregate("median", x, pre=[("clipping", {"tau": 0.5}), "bucketing"], s=2, seed=3)
    torch.testing.assert_close(both, aggregate("median", pre_aggregate(clipped, ["bucketing"], s=2, seed=3)))
    # A pre-aggregator that changes nothing returns its input.
    assert pre_aggregate(x, ["clipping"], tau=1e9) is x
    assert pre_aggregate(x, ["arc"], f=0) is x
    # Bucketing leaves ceil(11 / 3) = 4 rows: Krum with f = 1 needs 5 and says so.
    with pytest.raises(AggregationError, match="krum: needs n > 2f \\+ 2, got n=4, f=1"):
        aggregate("krum", x, f=1, pre=["bucketing"], s=3)


def test_inputs_are_never_modified() -> None:
    x = random_rows(6, 9, 5)
    keep = x.clone()
    own = random_rows(7, 1, 5)[0]
    w = torch.full((9,), 0.1, dtype=torch.float64)
    for name in RULES:
        params = {"f": min(2, max_f(name, 9)), "tau": 1.0, "own": own, "weights": w}
        _ = aggregate(name, x, **{k: v for k, v in params.items() if k in RULE_PARAMS[name]})
        assert torch.equal(x, keep), name
    krum = aggregate("krum", x, f=2)
    krum.add_(1.0)
    assert torch.equal(x, keep)


def test_huge_finite_rows_do_not_overflow() -> None:
    """float32 sums of 1e38 overflow; the rules recompute in float64 and stay finite."""
    x = torch.full((6, 3), 1e38, dtype=torch.float32)
    x[0] = 2e38
    torch.testing.assert_close(aggregate("mean", x), torch.full((3,), 7e38 / 6, dtype=torch.float32))
    assert bool(torch.isfinite(aggregate("median", x)).all())
    assert bool(torch.isfinite(pre_aggregate(x, ["clipping"], tau=1.0)).all())
    assert bool(torch.isfinite(aggregate("krum", x, f=1)).all())
