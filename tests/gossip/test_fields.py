"""The one settings coercer: every field type, one-line errors naming the key."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phalanx.gossip.fields import coerce, help_lines


@dataclass(frozen=True, kw_only=True)
class Example:
    s: int = field(default=10, metadata={"help": "sample size"})
    rate: float = 1.0
    rule: str | None = None
    ids: tuple[int, ...] = ()
    table: dict[str, Any] = field(default_factory=dict)
    on: bool = False


@given(
    s=st.integers(),
    rate=st.floats(allow_nan=False) | st.integers(),
    ids=st.lists(st.integers(), max_size=5),
    on=st.booleans(),
)
def test_good_values_round_trip_to_the_field_types(s: int, rate: float, ids: list[int], on: bool) -> None:
    out = Example(**coerce(Example, {"s": s, "rate": rate, "ids": ids, "on": on}))
    assert out.s == s and out.rate == float(rate) and out.ids == tuple(ids) and out.on is on
    assert isinstance(out.rate, float)


def test_none_and_inf_spellings() -> None:
    out = coerce(Example, {"rule": "", "rate": "inf"})
    assert out["rule"] is None and math.isinf(out["rate"])
    assert coerce(Example, {"rule": "median"})["rule"] == "median"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"s": 1.5}, "x: s must be a whole number, got 1.5"),
        ({"s": True}, "x: s must be a whole number, got True"),
        ({"ids": [1.5]}, "x: ids must be a list of whole numbers, got [1.5]"),
        ({"rate": "fast"}, "x: rate must be a number, got 'fast'"),
        ({"on": 1}, "x: on must be true or false, got 1"),
        ({"table": 3}, "x: table must be a table of name = value"),
        ({"zz": 1}, "x: unknown setting zz; known: ids, on, rate, rule, s, table"),
    ],
)
def test_bad_values_name_the_key_in_one_line(data: dict[str, Any], message: str) -> None:
    class Bad(ValueError):
        pass

    with pytest.raises(Bad) as info:
        coerce(Example, data, error=Bad, where="x: ")
    assert str(info.value) == message


def test_help_lines_come_from_field_metadata() -> None:
    assert help_lines(Example)[0] == "s (10): sample size"
