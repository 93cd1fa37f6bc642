"""The membership view MoDeST samples from: who is a member, and when each member was last seen active.

Every node keeps a :class:`View`: peer id -> (last round it was seen active, membership counter). A peer
bumps its own counter each time it joins or leaves, so an **odd counter means "joined"** and an even one
"left" (0 = never joined). Merging two views takes the maximum of each field per peer; that makes merge
commutative, associative and idempotent, so views converge however the gossip interleaves (a
state-based CRDT): the higher counter wins, and the newest activity is kept.

A member is *active for round k* when ``k - inactivity <= last_active <= k``. The upper bound is how a
join takes effect later rather than at once: a peer that hears a join while at round r records the
joiner with ``last_active = r + join_delay``, so samples of rounds before that exclude it (the very next
sample, which other nodes may already have drawn from views without the joiner, stays the same).

Views travel with model transfers as :class:`ViewDelta`: only the entries that changed in the last
``window`` rounds of the sender (each record keeps the sender-local round it last changed in). With
1,000 members and s = 10, a full view per transfer would be ~15 kB and a thousand dictionary updates per
message; a delta is the few dozen entries that actually moved. A joiner gets the full view once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from phalanx.gossip.events import PeerId
from phalanx.gossip.wire import MAX_STR, Limits, WireError

# Field names of a view on the wire: parallel arrays of peer ids, last-active rounds and counters.
IDS, ACTIVE, COUNTERS = "vi", "va", "vc"
MAX_COUNTER = 2**32


@dataclass(slots=True)
class PeerRecord:
    last_active: int
    counter: int
    changed: int  # the local round in which this record last changed (not sent)

    @property
    def member(self) -> bool:
        return self.counter % 2 == 1


@dataclass(frozen=True, slots=True)
class ViewDelta:
    """Some view entries in wire order: parallel tuples of peer ids, last-active rounds and counters."""

    ids: tuple[PeerId, ...] = ()
    active: tuple[int, ...] = ()
    counters: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not len(self.ids) == len(self.active) == len(self.counters):
            raise ValueError("ViewDelta arrays must have equal lengths")

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[tuple[PeerId, int, int]]:
        return zip(self.ids, self.active, self.counters)

    def to_fields(self) -> dict[str, Any]:
        return {IDS: list(self.ids), ACTIVE: list(self.active), COUNTERS: list(self.counters)}

    @classmethod
    def from_fields(cls, fields: dict[str, Any], limits: Limits) -> ViewDelta:
        """Decode the three arrays; each must be a list of the same length within ``limits.max_view``."""
        ids, active, counters = fields.get(IDS), fields.get(ACTIVE), fields.get(COUNTERS)
        if not (isinstance(ids, list) and isinstance(active, list) and isinstance(counters, list)):
            raise WireError("bad-field", "view arrays must be lists")
        if not len(ids) == len(active) == len(counters):
            raise WireError("bad-view", "view arrays differ in length")
        if len(ids) > limits.max_view:
            raise WireError("bad-view", f"view of {len(ids)} entries exceeds {limits.max_view}")
        if not all(type(p) is str and 0 < len(p) <= MAX_STR for p in ids):
            raise WireError("bad-view", "view peer ids must be non-empty strings")
        if len(set(ids)) != len(ids):
            raise WireError("bad-view", "view repeats a peer id")
        if not all(type(r) is int and 0 <= r <= limits.max_round for r in active):
            raise WireError("bad-view", "view rounds must be integers in range")
        if not all(type(c) is int and 0 <= c <= MAX_COUNTER for c in counters):
            raise WireError("bad-view", "view counters must be integers in range")
        return cls(tuple(ids), tuple(active), tuple(counters))


class View:
    """One node's membership view (see the module docstring). ``owner`` is the node keeping it."""

    __slots__ = ("_ids", "_recent", "owner", "records")

    def __init__(self, owner: PeerId, members: Iterable[PeerId] = (), *, round: int = 0) -> None:
        self.owner = owner
        self.records: dict[PeerId, PeerRecord] = {}
        self._ids: tuple[PeerId, ...] | None = None
        # Peers whose record changed since the oldest ``since`` asked of delta(): deltas never scan the view.
        self._recent: dict[PeerId, None] = {}
        for peer in members:
            # The initial membership is common knowledge: it never needs to travel as a change.
            self.records[peer] = PeerRecord(last_active=round, counter=1, changed=-1)

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, peer: object) -> bool:
        return peer in self.records

    def ids(self) -> tuple[PeerId, ...]:
        """All known peer ids (members or not), sorted; cached until a new peer appears."""
        if self._ids is None:
            self._ids = tuple(sorted(self.records))
        return self._ids

    def get(self, peer: PeerId) -> PeerRecord | None:
        return self.records.get(peer)

    def update(self, peer: PeerId, last_active: int, counter: int, *, now_round: int) -> bool:
        """Merge one entry (field-wise maximum); returns whether anything changed."""
        rec = self.records.get(peer)
        if rec is None:
            self.records[peer] = PeerRecord(last_active=last_active, counter=counter, changed=now_round)
            self._ids = None
            self._recent[peer] = None
            return True
        if last_active > rec.last_active or counter > rec.counter:
            rec.last_active = max(rec.last_active, last_active)
            rec.counter = max(rec.counter, counter)
            rec.changed = now_round
            self._recent[peer] = None
            return True
        return False

    def touch(self, peer: PeerId, round: int, *, now_round: int) -> None:
        """``peer`` was seen active in ``round`` (it sent a model, answered a ping, aggregated)."""
        rec = self.records.get(peer)
        if rec is None:
            self.update(peer, round, 1, now_round=now_round)
        elif round > rec.last_active:
            rec.last_active = round
            rec.changed = now_round
            self._recent[peer] = None

    def merge(self, delta: ViewDelta, *, now_round: int) -> int:
        """Merge a received delta; returns the number of entries that changed."""
        changed = 0
        for peer, active, counter in delta:
            changed += self.update(peer, active, counter, now_round=now_round)
        return changed

    def is_member(self, peer: PeerId) -> bool:
        rec = self.records.get(peer)
        return rec is not None and rec.member

    def is_active(self, peer: PeerId, k: int, inactivity: int) -> bool:
        """A member seen active within the last ``inactivity`` rounds of ``k`` (and not scheduled later)."""
        rec = self.records.get(peer)
        return rec is not None and rec.counter % 2 == 1 and k - inactivity <= rec.last_active <= k

    def active(self, k: int, inactivity: int) -> list[PeerId]:
        """The peers active for round ``k``, sorted."""
        return [p for p in self.ids() if self.is_active(p, k, inactivity)]

    def delta(self, *, since: int | None = None) -> ViewDelta:
        """Entries that changed in local round ``since`` or later (all entries when ``since`` is None).

        Calls with ``since`` must not decrease it: older changes are forgotten as they are passed.
        """
        if since is None:
            items = [(p, r.last_active, r.counter) for p, r in self.records.items()]
        else:
            records = self.records
            stale = [p for p in self._recent if records[p].changed < since]
            for p in stale:
                del self._recent[p]
            items = [(p, records[p].last_active, records[p].counter) for p in self._recent]
        if not items:
            return ViewDelta()
        ids, active, counters = zip(*items)
        return ViewDelta(ids, active, counters)

    def counter(self, peer: PeerId) -> int:
        rec = self.records.get(peer)
        return 0 if rec is None else rec.counter


EMPTY_VIEW = ViewDelta()
