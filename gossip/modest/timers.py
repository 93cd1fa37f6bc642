"""MoDeST's timers as typed values: :class:`Timer` is what a timer name means, :func:`name` and :func:`parse`
turn it into the string a runner keys timers by and back (no ad-hoc ``partition(":")`` in the protocol)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

PREFIX = "modest/"


class Kind(enum.Enum):
    PING = "ping"  # resend pings / time out silent candidates of search ``arg`` (a nonce)
    WATCH = "watch"  # check that the chosen peers of search ``arg`` finished their part
    AGGREGATE = "aggregate"  # aggregate the trained models of round ``arg`` that arrived
    COMBINE = "combine"  # robust variant: combine the aggregates of round ``arg`` that arrived


@dataclass(frozen=True, slots=True)
class Timer:
    kind: Kind
    arg: int

    @property
    def name(self) -> str:
        return f"{PREFIX}{self.kind.value}/{self.arg}"


def ping(nonce: int) -> str:
    return Timer(Kind.PING, nonce).name


def watch(nonce: int) -> str:
    return Timer(Kind.WATCH, nonce).name


def aggregate(round_: int) -> str:
    return Timer(Kind.AGGREGATE, round_).name


def combine(round_: int) -> str:
    return Timer(Kind.COMBINE, round_).name


_KINDS = {k.value: k for k in Kind}


def parse(name: str) -> Timer | None:
    """The timer a name stands for, or None for a name that is not one of MoDeST's."""
    if not name.startswith(PREFIX):
        return None
    kind, _, arg = name[len(PREFIX) :].partition("/")
    if kind not in _KINDS or not arg.isdigit():
        return None
    return Timer(_KINDS[kind], int(arg))
