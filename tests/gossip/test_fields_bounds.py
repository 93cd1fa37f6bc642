"""The coercer's bounds, paths, unknown keys, help with defaults and TOML reading (phalanx.gossip.fields)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phalanx.gossip.fields import (
    ConfigError,
    bounds_text,
    check_bounds,
    coerce,
    help_with_default,
    load_toml,
    parse_value,
    reject_unknown,
    within,
)


@dataclass(frozen=True, kw_only=True)
class Bounded:
    rate: float = field(default=0.5, metadata={"help": "a rate", "gt": 0, "finite": True})
    fraction: float = field(default=0.0, metadata={"help": "a fraction", "min": 0, "max": 1})
    momentum: float = field(default=0.0, metadata={"min": 0, "lt": 1})
    port: int = field(default=0, metadata={"min": -1})
    kind: str = field(default="a", metadata={"choices": ("a", "b")})
    where: Path | None = None
    home: Path = Path(".")
    names: tuple[str, ...] = field(default=("x", "y"), metadata={"help": "names"})

    def __post_init__(self) -> None:
        check_bounds(self)


def test_bounds_are_phrased_as_they_are_checked() -> None:
    meta = {f.name: f.metadata for f in fields(Bounded)}
    assert bounds_text(meta["rate"]) == "a finite number > 0"
    assert bounds_text(meta["fraction"]) == "in [0, 1]"
    assert bounds_text(meta["momentum"]) == "in [0, 1)"
    assert bounds_text(meta["port"]) == ">= -1"
    assert bounds_text({"finite": True}) == "a finite number"
    assert bounds_text({"max": 2.5}) == "<= 2.5"
    assert bounds_text({}) == ""


@given(st.floats(allow_nan=True, allow_infinity=True), st.floats(-10, 10), st.floats(-10, 10))
def test_within_agrees_with_the_plain_comparisons(value: float, a: float, b: float) -> None:
    lo, hi = min(a, b), max(a, b)
    assert within({"min": lo, "lt": hi}, value) == (lo <= value < hi)
    assert within({"gt": lo, "max": hi}, value) == (lo < value <= hi)
    assert within({"gt": lo, "finite": True}, value) == (math.isfinite(value) and value > lo)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rate": 0.0}, "rate must be a finite number > 0, got 0"),
        ({"rate": math.inf}, "rate must be a finite number > 0, got inf"),
        ({"rate": math.nan}, "rate must be a finite number > 0, got nan"),
        ({"fraction": 1.5}, r"fraction must be in \[0, 1\], got 1.5"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\), got 1"),
        ({"port": -2}, "port must be >= -1, got -2"),
        ({"kind": "c"}, "unknown kind 'c'; choose one of: a, b"),
    ],
)
def test_check_bounds_is_one_line_naming_the_field(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        Bounded(**values)
    assert "\n" not in str(info.value)


def test_paths_and_unknown_keys() -> None:
    out = coerce(Bounded, {"where": "~/w", "home": Path("h")})
    assert out == {"where": Path("~/w").expanduser(), "home": Path("h")}
    assert coerce(Bounded, {"where": ""}) == {"where": None}  # empty: the default (None)
    with pytest.raises(ConfigError, match="home must be a path, got ''"):
        coerce(Bounded, {"home": ""}, error=ConfigError)
    with pytest.raises(ConfigError, match="home must be a path, got 3"):
        coerce(Bounded, {"home": 3}, error=ConfigError)
    with pytest.raises(ConfigError, match=r"^unknown setting 'rat' \(did you mean 'rate'\?\)$"):
        reject_unknown(Bounded, {"rate": 1.0, "rat": 1})
    with pytest.raises(ValueError, match=r"^x: unknown setting 'zzz'$"):
        reject_unknown(Bounded, {"zzz": 1}, error=ValueError, where="x: ")
    reject_unknown(Bounded, {"rate": 1.0})


def test_help_with_default() -> None:
    by_name = {f.name: f for f in fields(Bounded)}
    assert help_with_default(by_name["rate"]) == "a rate (default: 0.5)"
    assert help_with_default(by_name["names"]) == "names (default: x, y)"
    assert help_with_default(by_name["where"]) == ""


def test_parse_value_and_load_toml(tmp_path: Path) -> None:
    assert [parse_value(t) for t in ("1", "0.5", "true", "[1, 2]", "alie")] == [1, 0.5, True, [1, 2], "alie"]
    path = tmp_path / "c.toml"
    path.write_text("a = 1\n[t]\nb = 'x'\n")
    assert load_toml(path) == {"a": 1, "t": {"b": "x"}}
    path.write_text("a = \n")
    with pytest.raises(ConfigError, match=f"config file {path} is not valid TOML") as info:
        load_toml(path)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"config file .*missing.toml: No such file"):
        load_toml(tmp_path / "missing.toml")
