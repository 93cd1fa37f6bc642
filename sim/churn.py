"""Churn traces for sampling protocols: when each node joins, leaves (announced) or crashes (silent).

A trace maps a node id to its events in time order, ``(virtual seconds, "join" | "leave" | "crash")``. It
comes from a CSV file with the header ``time,node,event`` (one event per row, any order) or is generated
from rates (:func:`churn_from_rates`). A node whose first event is ``join`` is outside the network until
then. The protocol carries out its own events with timers (see :class:`~phalanx.gossip.modest.Modest`), so
the engine needs nothing new.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from phalanx.gossip.events import PeerId

EVENTS = ("join", "leave", "crash")
Trace = dict[PeerId, tuple[tuple[float, str], ...]]


class ChurnError(ValueError):
    """A churn trace that cannot be used."""


def read_churn_csv(path: Path | str, *, nodes: int) -> Trace:
    """Read ``time,node,event`` rows; node ids must be in ``0 .. nodes-1``, times finite and >= 0."""
    events: dict[PeerId, list[tuple[float, str]]] = {}
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or set(reader.fieldnames) < {"time", "node", "event"}:
                raise ChurnError(f"{path}: the header must be time,node,event")
            for line, row in enumerate(reader, start=2):
                try:
                    t = float(row["time"])
                    node = int(row["node"])
                except (TypeError, ValueError):
                    raise ChurnError(f"{path}:{line}: time must be a number and node an integer") from None
                event = (row["event"] or "").strip()
                if not (math.isfinite(t) and t >= 0):
                    raise ChurnError(f"{path}:{line}: time must be finite and >= 0")
                if not 0 <= node < nodes:
                    raise ChurnError(f"{path}:{line}: node {node} is not in 0..{nodes - 1}")
                if event not in EVENTS:
                    raise ChurnError(f"{path}:{line}: event must be one of {', '.join(EVENTS)}")
                events.setdefault(str(node), []).append((t, event))
    except OSError as exc:
        raise ChurnError(f"cannot read churn trace {path}: {exc.strerror}") from None
    return {node: tuple(sorted(evs)) for node, evs in events.items()}


def write_churn_csv(trace: Mapping[PeerId, tuple[tuple[float, str], ...]], path: Path | str) -> None:
    rows = sorted((t, int(node), event) for node, evs in trace.items() for t, event in evs)
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["time", "node", "event"])
        out.writerows(rows)


def churn_from_rates(
    nodes: int, *, leave: float, crash: float, rejoin: float, horizon: float, seed: int, late: float = 0.0
) -> Trace:
    """Per-node Poisson churn over ``[0, horizon)``: a present node leaves at rate ``leave`` and crashes at
    rate ``crash`` (events per virtual second); an absent one comes back at rate ``rejoin``. A fraction
    ``late`` of the nodes (chosen at random) is absent at the start and joins at a uniform time."""
    for name, value in (("leave", leave), ("crash", crash), ("rejoin", rejoin), ("horizon", horizon)):
        if not (value >= 0 and math.isfinite(value)):
            raise ChurnError(f"{name} must be a finite number >= 0, got {value}")
    if not 0 <= late < 1:
        raise ChurnError(f"late must be in [0, 1), got {late}")
    rng = np.random.default_rng(seed)
    late_nodes = set(rng.choice(nodes, size=round(late * nodes), replace=False).tolist())
    trace: Trace = {}
    for i in range(nodes):
        events: list[tuple[float, str]] = []
        present, t = True, 0.0
        if i in late_nodes:
            present, t = False, float(rng.uniform(0, horizon))
            events.append((t, "join"))
            present = True
        while True:
            rate = (leave + crash) if present else rejoin
            if rate <= 0:
                break
            t += float(rng.exponential(1.0 / rate))
            if t >= horizon:
                break
            if present:
                events.append((t, "leave" if rng.random() * (leave + crash) < leave else "crash"))
            else:
                events.append((t, "join"))
            present = not present
        if events:
            trace[str(i)] = tuple(events)
    return trace
