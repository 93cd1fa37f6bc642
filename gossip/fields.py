"""One coercer for every settings dataclass: plain values (TOML, ``KEY=VALUE`` flags) -> typed fields.

A settings class is a frozen dataclass whose fields carry their type and, in ``field(metadata=...)``,
their help text (``help(cls)`` lists them). :func:`coerce` turns a mapping of plain values into the
keyword arguments of that class, checking every value against the field's annotated type, and raises
the caller's error type with one line naming the key. The simulator's, the node's and every protocol's
parameters go through it, so a key means the same thing, with the same checks, wherever it is given.

Types understood: ``int`` (a whole number; ``True`` is not one), ``float`` (an int is widened; ``"inf"``
and ``"-inf"`` are accepted), ``bool``, ``str``, ``Path`` (a non-empty string, ``~`` expanded), ``X | None``
(``None`` or an empty string for None), ``tuple[int, ...]`` / ``tuple[str, ...]`` / ``tuple[float, ...]``
(a list), and ``dict[str, Any]`` (a table).

Besides ``help``, a field's metadata may bound its value: ``min`` (>=), ``gt`` (>), ``max`` (<=), ``lt`` (<),
``finite`` (no infinity or NaN) and ``choices`` (a tuple of allowed values). :func:`check_bounds` (called by
a settings class's ``__post_init__``) enforces them with one line such as ``lr must be a finite number > 0,
got 0.0``, and :func:`bounds_text` phrases them for help and CLI errors. The simulator's and the node's
configs raise one error class, :class:`ConfigError`; both read TOML through :func:`load_toml` and flag
values through :func:`parse_value`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A setting that cannot be used (of a simulation or a node); the message names the key."""


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
    if kind is Path:
        if not isinstance(value, str | Path) or not str(value):
            raise bad("a path")
        return Path(value).expanduser()
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


def help_with_default(f: dataclasses.Field[Any]) -> str:
    """A field's help and its default, for a command-line flag: ``learning rate (default: 0.05)``.

    An empty default ("", (), None, a table) is not shown."""
    value = f.default
    if value is dataclasses.MISSING or value in ("", (), None):
        return describe(f)
    shown = ", ".join(map(str, value)) if isinstance(value, tuple) else _number_text(value)
    return f"{describe(f)} (default: {shown})"


def reject_unknown(
    cls: type, data: Mapping[str, Any], *, error: type[Exception] = ConfigError, where: str = ""
) -> None:
    """``error`` naming the first key of ``data`` that is not a field of ``cls`` (with the closest field)."""
    known = [name for name in field_types(cls) if not name.startswith("_")]
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise error(f"{where}unknown setting {key!r}{hint}")


def _number_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def bounds_text(metadata: Mapping[str, Any]) -> str:
    """What a field's bounds allow, e.g. ``a finite number > 0``, ``>= 1`` or ``in [0, 1)`` ("" if none)."""
    lo = ("[", metadata["min"]) if "min" in metadata else ("(", metadata["gt"]) if "gt" in metadata else None
    hi = ("]", metadata["max"]) if "max" in metadata else (")", metadata["lt"]) if "lt" in metadata else None
    if lo and hi:
        text = f"in {lo[0]}{_number_text(lo[1])}, {_number_text(hi[1])}{hi[0]}"
    elif lo:
        text = f"{'>=' if lo[0] == '[' else '>'} {_number_text(lo[1])}"
    elif hi:
        text = f"{'<=' if hi[0] == ']' else '<'} {_number_text(hi[1])}"
    else:
        text = ""
    if metadata.get("finite"):
        return f"a finite number {text}".rstrip()
    return text


def within(metadata: Mapping[str, Any], value: Any) -> bool:
    """Whether ``value`` satisfies the bounds in a field's ``metadata`` (``choices`` aside)."""
    if metadata.get("finite") and not math.isfinite(value):
        return False
    checks = (
        ("min", lambda b: value >= b),
        ("gt", lambda b: value > b),
        ("max", lambda b: value <= b),
        ("lt", lambda b: value < b),
    )
    return all(ok(metadata[key]) for key, ok in checks if key in metadata)


def check_bounds(obj: Any, *, error: type[Exception] = ConfigError, where: str = "") -> None:
    """``error`` (one line naming the field) for the first field of the dataclass instance ``obj`` whose
    value breaks its metadata's bounds or ``choices``; ``None`` values are not checked."""
    for f in dataclasses.fields(obj):
        meta = f.metadata
        value = getattr(obj, f.name)
        if value is None:
            continue
        if "choices" in meta and value not in meta["choices"]:
            choices = ", ".join(str(c) for c in meta["choices"])
            raise error(f"{where}unknown {f.name} {value!r}; choose one of: {choices}")
        if bounds_text(meta) and not within(meta, value):
            raise error(f"{where}{f.name} must be {bounds_text(meta)}, got {_number_text(value)}")


def parse_value(text: str) -> Any:
    """A ``KEY=VALUE`` flag's value: TOML syntax when it parses (numbers, booleans, lists), else the string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def load_toml(path: Path, *, error: type[Exception] = ConfigError) -> dict[str, Any]:
    """A TOML file as plain values, or ``error`` with one line naming the file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise error(f"config file {path}: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"config file {path} is not valid TOML: {exc}") from None
