"""One coercer for every settings dataclass: plain values (TOML, ``KEY=VALUE`` flags) -> typed fields.

A settings class is a frozen dataclass whose fields carry their type and, in ``field(metadata=...)``,
their help text (``help(cls)`` lists them). :func:`coerce` turns a mapping of plain values into the
keyword arguments of that class, checking every value against the field's annotated type, and raises
the caller's error type with one line naming the key. The simulator's, the node's and every protocol's
parameters go through it, so a key means the same thing, with the same checks, wherever it is given.

Types understood: ``int`` (a whole number; ``True`` is not one), ``float`` (an int is widened; ``"inf"``
and ``"-inf"`` are accepted), ``bool``, ``str``, ``X | None`` (``None`` or an empty string for None),
``tuple[int, ...]`` / ``tuple[str, ...]`` / ``tuple[float, ...]`` (a list), and ``dict[str, Any]`` (a table).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any


def describe(f: dataclasses.Field[Any]) -> str:
    """A field's help text (``metadata["help"]``), or "" when it has none."""
    return str(f.metadata.get("help", ""))


@cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of each field of the dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def help_lines(cls: type) -> list[str]:
    """``name (default): help`` for each field of ``cls``, in declaration order."""
    lines = []
    for f in dataclasses.fields(cls):
        if f.name.startswith("_"):
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        lines.append(f"{f.name} ({default!r}): {describe(f)}".rstrip(": "))
    return lines


def coerce(
    cls: type, data: Mapping[str, Any], *, error: type[Exception] = ValueError, where: str = ""
) -> dict[str, Any]:
    """Keyword arguments for ``cls`` from ``data``; ``error`` (one line naming the key) on a bad one.

    ``where`` prefixes every message (e.g. ``"modest: "``). Unknown keys are errors that list the known ones.
    """
    types_ = field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        known = ", ".join(sorted(k for k in types_ if not k.startswith("_")))
        raise error(
            f"{where}unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; known: {known or 'none'}"
        )
    return {
        key: coerce_value(key, types_[key], value, error=error, where=where) for key, value in data.items()
    }


def coerce_value(
    key: str, kind: Any, value: Any, *, error: type[Exception] = ValueError, where: str = ""
) -> Any:
    """``value`` as the type ``kind`` of field ``key`` (see the module docstring for the types)."""

    def bad(expected: str) -> Exception:
        return error(f"{where}{key} must be {expected}, got {value!r}")

    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        if (value is None or value == "") and type(None) in typing.get_args(kind):
            return None
        if len(options) == 1:
            return coerce_value(key, options[0], value, error=error, where=where)
        for option in options:
            try:
                return coerce_value(key, option, value, error=error, where=where)
            except error:
                continue
        raise bad(" or ".join(getattr(o, "__name__", str(o)) for o in options))
    if kind is Any:
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind is int:
        if type(value) is not int:
            raise bad("a whole number")
        return value
    if kind is float:
        if value in ("inf", "-inf"):
            return math.inf if value == "inf" else -math.inf
        if type(value) not in (int, float):
            raise bad("a number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if origin is tuple:
        (item, *_rest) = typing.get_args(kind) or (Any,)
        if not isinstance(value, list | tuple):
            raise bad("a list")
        name = {int: "whole numbers", float: "numbers", str: "strings"}.get(item, "values")
        try:
            return tuple(coerce_value(key, item, v, error=error, where=where) for v in value)
        except error:
            raise bad(f"a list of {name}") from None
    if origin in (dict, Mapping) or kind in (dict, Mapping) or origin is typing.Mapping:
        if not isinstance(value, Mapping):
            raise error(f"{where}{key} must be a table of name = value")
        return dict(value)
    return value  # a type this coercer does not know: the dataclass's own checks judge it
