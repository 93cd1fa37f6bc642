"""Decentralized sampling: every node ranks peers for round k by SHA-256 of (peer id, k), no coordinator.

The rank key of a peer for round ``k`` is ``SHA-256(utf8(peer) || 0x00 || k as 8 big-endian bytes)``,
compared as bytes. A node walks the ranking in order, keeps the peers its view holds active for round
``k`` and pings them; the first ``s`` that answer are the trainers of round k (and, with a second
ranking salted by role, the first ``a`` are its aggregators). Two nodes with the same view walk the same
list, so they draw the same sample; with different views they differ only where the views differ.

The trainer and aggregator rankings of a round are independent (the role is part of the hashed bytes),
so one peer can be both; that is allowed, as in MoDeST.

The ranking of all known ids for a round is memoised (a pure function of its arguments): in a simulation
of 1,000 nodes the s + a nodes that sample a round share one sort instead of repeating it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from functools import lru_cache

from phalanx.gossip.events import PeerId
from phalanx.gossip.membership import View

TRAINERS = b"t"
AGGREGATORS = b"a"


def rank_key(peer: PeerId, k: int, role: bytes = TRAINERS) -> bytes:
    """The SHA-256 rank key of ``peer`` for round ``k`` and ``role``; smaller ranks first."""
    return hashlib.sha256(peer.encode() + b"\x00" + role + k.to_bytes(8, "big")).digest()


@lru_cache(maxsize=256)
def ranking(ids: tuple[PeerId, ...], k: int, role: bytes = TRAINERS) -> tuple[PeerId, ...]:
    """All of ``ids`` in rank order for round ``k`` (ties, impossible in practice, break by id)."""
    suffix = b"\x00" + role + k.to_bytes(8, "big")
    sha256 = hashlib.sha256
    keyed = sorted((sha256(p.encode() + suffix).digest(), p) for p in ids)
    return tuple(p for _, p in keyed)


def candidates(view: View, k: int, *, inactivity: int, role: bytes = TRAINERS) -> Iterator[PeerId]:
    """The peers active for round ``k`` in rank order, lazily: callers stop after the ones they need."""
    for peer in ranking(view.ids(), k, role):
        if view.is_active(peer, k, inactivity):
            yield peer


def sample(view: View, k: int, size: int, *, inactivity: int, role: bytes = TRAINERS) -> list[PeerId]:
    """The first ``size`` active peers of round ``k``: the sample when every candidate is available."""
    out: list[PeerId] = []
    if size <= 0:
        return out
    for peer in candidates(view, k, inactivity=inactivity, role=role):
        out.append(peer)
        if len(out) == size:
            break
    return out
