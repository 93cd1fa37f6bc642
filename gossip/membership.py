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

**Signed records** (a view built with a :class:`~phalanx.gossip.identity.Verifier`). Then only a peer can
speak for itself: the gossiped form of a record is (peer, counter, claimed round, the peer's signature over
the three), the owner signs a new record when it joins, leaves or is active in a newer round, and relays
forward it unchanged. A received record is merged only when its signature verifies (each distinct record is
verified once) and its claimed round is not in the future beyond ``max_claim``; the newer record, ordered by
(counter, round), replaces the older one whole. What a node observes itself (a peer answered a ping) raises
its own ``last_active`` for that peer but is not gossiped, since nobody else could check it. The initial
membership (configured, common knowledge) needs no signature and is never gossiped. Without a verifier
(protocol unit tests) records merge field-wise as described above.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from phalanx.gossip.events import PeerId
from phalanx.gossip.identity import SIGNATURE_BYTES, Signer, Verifier
from phalanx.gossip.wire import MAX_STR, Limits, WireError

# Field names of a view on the wire: parallel arrays of peer ids, last-active rounds, counters, signatures.
IDS, ACTIVE, COUNTERS, SIGS = "vi", "va", "vc", "vg"
MAX_COUNTER = 2**32


@dataclass(slots=True)
class PeerRecord:
    last_active: int  # the newest round this node knows the peer active in (signed claims and observations)
    counter: int
    changed: int  # the local round in which this record last changed (not sent)
    claim: int = 0  # the round the peer's own signed record claims (signed views)
    sig: bytes = b""  # the peer's signature over (peer, counter, claim); b"" for the initial membership

    @property
    def member(self) -> bool:
        return self.counter % 2 == 1


@dataclass(frozen=True, slots=True)
class ViewDelta:
    """Some view entries in wire order: parallel tuples of peer ids, (claimed) rounds, counters and the
    owners' signatures (empty tuple: an unsigned view)."""

    ids: tuple[PeerId, ...] = ()
    active: tuple[int, ...] = ()
    counters: tuple[int, ...] = ()
    sigs: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if not len(self.ids) == len(self.active) == len(self.counters):
            raise ValueError("ViewDelta arrays must have equal lengths")
        if self.sigs and len(self.sigs) != len(self.ids):
            raise ValueError("ViewDelta signatures must be one per entry, or none")

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[tuple[PeerId, int, int]]:
        return zip(self.ids, self.active, self.counters)

    def signed(self) -> Iterator[tuple[PeerId, int, int, bytes]]:
        sigs = self.sigs or (b"",) * len(self.ids)
        return zip(self.ids, self.active, self.counters, sigs)

    def to_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {IDS: list(self.ids), ACTIVE: list(self.active), COUNTERS: list(self.counters)}
        if self.sigs:
            out[SIGS] = list(self.sigs)
        return out

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
        sigs = fields.get(SIGS, [])
        if not isinstance(sigs, list) or (sigs and len(sigs) != len(ids)):
            raise WireError("bad-view", "view signatures must be a list, one per entry")
        if not all(type(g) is bytes and len(g) == SIGNATURE_BYTES for g in sigs):
            raise WireError("bad-view", f"view signatures must be {SIGNATURE_BYTES} bytes each")
        return cls(tuple(ids), tuple(active), tuple(counters), tuple(sigs))


class View:
    """One node's membership view (see the module docstring). ``owner`` is the node keeping it."""

    __slots__ = ("_ids", "_recent", "owner", "records", "refresh", "rejected", "signer", "verifier")

    def __init__(
        self,
        owner: PeerId,
        members: Iterable[PeerId] = (),
        *,
        round: int = 0,
        signer: Signer | None = None,
        verifier: Verifier | None = None,
        refresh: int = 1,
    ) -> None:
        self.owner = owner
        # rounds between two re-signings of this node's own activity claim (each new record travels in
        # every delta for a while, so a claim renewed every round would cost bytes for nothing)
        self.refresh = max(1, refresh)
        self.signer = signer
        self.verifier = verifier  # None: an unsigned view (protocol unit tests); runners always pass one
        self.rejected = 0  # received records refused: bad or missing signature, claim too far ahead
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

    @property
    def signed(self) -> bool:
        return self.verifier is not None

    def own(self, counter: int, round: int, *, now_round: int) -> None:
        """This node's own record: a new counter (join/leave) or activity in ``round``, signed when signed."""
        rec = self.records.get(self.owner)
        sig = b""
        if self.signer is not None:
            sig = self.signer.sign(counter, round)
        if rec is None:
            rec = self.records[self.owner] = PeerRecord(round, counter, now_round, round, sig)
            self._ids = None
        else:
            rec.counter, rec.claim, rec.sig = counter, round, sig
            rec.last_active = max(rec.last_active, round) if counter % 2 else round
            rec.changed = now_round
        self._recent[self.owner] = None

    def touch(self, peer: PeerId, round: int, *, now_round: int) -> None:
        """``peer`` was seen active in ``round`` (it sent a model, answered a ping, aggregated).

        In a signed view an observation of another peer is local (never gossiped), an unknown peer is not
        added, and the node's own activity in a newer round is re-signed."""
        rec = self.records.get(peer)
        if self.signed:
            if peer == self.owner:
                if rec is None or round >= rec.claim + self.refresh:
                    self.own(1 if rec is None else rec.counter, round, now_round=now_round)
                elif round > rec.last_active:
                    rec.last_active = round
            elif rec is not None and round > rec.last_active:
                rec.last_active = round
            return
        if rec is None:
            self.update(peer, round, 1, now_round=now_round)
        elif round > rec.last_active:
            rec.last_active = round
            rec.changed = now_round
            self._recent[peer] = None

    def accept(
        self,
        peer: PeerId,
        counter: int,
        claim: int,
        sig: bytes,
        *,
        now_round: int,
        max_claim: int | None = None,
        active_from: int = 0,
        admit: Callable[[PeerId], bool] | None = None,
    ) -> bool | None:
        """A record received from the network: merged if valid (True if it changed the view, False if not
        newer), or None when refused (counted in ``rejected``). ``active_from`` raises the local
        ``last_active`` of a peer this record makes a member again (MoDeST's join delay); ``admit`` decides
        whether a peer the view does not know yet may enter it (an admission policy)."""
        if peer == self.owner:
            return False  # nobody speaks for this node but itself
        if admit is not None and peer not in self.records and not admit(peer):
            self.rejected += 1
            return None
        if self.verifier is None:
            changed = self.update(peer, max(claim, active_from), counter, now_round=now_round)
            return changed
        rec = self.records.get(peer)
        if rec is not None and (counter, claim) <= (rec.counter, rec.claim):
            return False  # not newer than what the view holds: nothing to check, nothing to change
        if (max_claim is not None and claim > max_claim) or not self.verifier.verify(
            peer, counter, claim, sig
        ):
            self.rejected += 1
            return None
        if rec is None:
            self.records[peer] = PeerRecord(max(claim, active_from), counter, now_round, claim, sig)
            self._ids = None
        else:
            rejoined = counter % 2 == 1 and counter > rec.counter
            rec.counter, rec.claim, rec.sig = counter, claim, sig
            rec.last_active = max(rec.last_active, claim, active_from if rejoined else 0)
            rec.changed = now_round
        self._recent[peer] = None
        return True

    def merge(
        self,
        delta: ViewDelta,
        *,
        now_round: int,
        max_claim: int | None = None,
        admit: Callable[[PeerId], bool] | None = None,
    ) -> int:
        """Merge a received delta; returns the number of entries that changed (refused ones are counted in
        ``rejected``)."""
        changed = 0
        for peer, active, counter, sig in delta.signed():
            result = self.accept(
                peer, counter, active, sig, now_round=now_round, max_claim=max_claim, admit=admit
            )
            changed += bool(result)
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
        records = self.records
        if since is None:
            chosen: Iterable[PeerId] = records
        else:
            stale = [p for p in self._recent if records[p].changed < since]
            for p in stale:
                del self._recent[p]
            chosen = self._recent
        if self.signed:  # only the owners' signed records travel
            items = [
                (p, records[p].claim, records[p].counter, records[p].sig) for p in chosen if records[p].sig
            ]
            if not items:
                return ViewDelta()
            ids, active, counters, sigs = zip(*items)
            return ViewDelta(ids, active, counters, sigs)
        plain = [(p, records[p].last_active, records[p].counter) for p in chosen]
        if not plain:
            return ViewDelta()
        ids, active, counters = zip(*plain)
        return ViewDelta(ids, active, counters)

    def counter(self, peer: PeerId) -> int:
        rec = self.records.get(peer)
        return 0 if rec is None else rec.counter


EMPTY_VIEW = ViewDelta()
