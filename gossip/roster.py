"""Who is in the network, for protocols that have no membership of their own (D-PSGD, Epidemic Learning), and
where to reach each member: a node-level exchange of MoDeST's signed membership records.

A node that starts with one bootstrap address knows one peer. To learn the others it swaps *offers* with
peers it knows: an offer is the sender's signed records (:mod:`phalanx.gossip.membership`, the same records
MoDeST's view gossips: peer, counter, claimed round, the peer's own ed25519 signature) plus, per record, a few
address hints (multiaddrs). Only a peer speaks for its own membership: a record is merged only when its
owner's signature verifies, so no peer can add, evict or resurrect another. Address hints are not signed and
need not be: dialling a wrong address reaches nobody or a host whose Noise handshake does not prove the
peer id, so a lie costs a failed dial, never a wrong peer. A peer's hints about itself replace what others
said about it; a third party's hint is kept only while nothing better is known.

Bounds: an offer holds at most ``max_members`` records of at most ``MAX_ADDRS`` hints each (decoded under
:class:`~phalanx.gossip.wire.Limits` sized from that); the roster never grows past ``max_members`` peers;
newcomers pass the admission policy of :mod:`phalanx.gossip.modest.admission` (allow-list, proof of work, at
most ``per_introducer`` newcomers per introducer per round).

:func:`choose_neighbours` is the overlay a D-PSGD node keeps on top: ``degree`` neighbours drawn at random
from the members, keeping the ones still there and replacing the ones that left or went down.

Sans-I/O: a runner moves :func:`encode_offer` bytes over a stream and calls :meth:`Roster.receive`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from phalanx.gossip.events import Action, PeerId
from phalanx.gossip.identity import Signer, Verifier
from phalanx.gossip.membership import View, ViewDelta
from phalanx.gossip.modest.admission import AdmissionPolicy, Gate
from phalanx.gossip.wire import BASE_ITEMS, MAX_STR, Limits, WireError, pack, read_int, unpack

OFFER_TYPE = "members"
ADDRS = "vd"  # per record: a list of multiaddr strings
MAX_ADDRS = 4  # address hints per record
MAX_MEMBERS = 1024  # default bound on the roster and on one offer


def offer_limits(max_members: int = MAX_MEMBERS) -> Limits:
    """Decode limits of an offer of up to ``max_members`` records (no model vector in it)."""
    per_entry = 54 + 10 + 10 + 66 + MAX_ADDRS * (MAX_STR + 3) + 3
    return Limits(
        dim=1,
        max_view=max_members,
        max_frame=per_entry * max_members + 4096,
        max_items=BASE_ITEMS + (5 + MAX_ADDRS) * max_members,
        max_depth=3,
    )


@dataclass(frozen=True, slots=True)
class Offer:
    """Signed records and, parallel to them, each record's address hints; ``round`` is the sender's round."""

    round: int
    view: ViewDelta
    addrs: tuple[tuple[str, ...], ...] = ()
    neighbour: bool = False  # the sender chose the receiver as a neighbour (D-PSGD overlay)

    def __post_init__(self) -> None:
        if self.addrs and len(self.addrs) != len(self.view):
            raise ValueError("Offer addrs must be one tuple per record, or none")


def encode_offer(offer: Offer) -> bytes:
    fields: dict[str, Any] = {"r": offer.round, **offer.view.to_fields()}
    fields[ADDRS] = [list(a) for a in offer.addrs] if offer.addrs else [[] for _ in offer.view.ids]
    if offer.neighbour:
        fields["nb"] = True
    return pack(OFFER_TYPE, fields)


def decode_offer(body: bytes | bytearray | memoryview, limits: Limits) -> Offer:
    """An offer from a peer, checked under ``limits``; :class:`WireError` for anything else."""
    fields = unpack(body, limits)
    if fields["t"] != OFFER_TYPE:
        raise WireError("unknown-type", f"expected a {OFFER_TYPE} message, got {fields['t']!r}"[:200])
    view = ViewDelta.from_fields(fields, limits)
    if not view.sigs and len(view):
        raise WireError("bad-view", "membership records must be signed")
    raw = fields.get(ADDRS)
    if not isinstance(raw, list) or len(raw) != len(view):
        raise WireError("bad-field", "address hints must be a list, one per record")
    addrs = []
    for hints in raw:
        if not isinstance(hints, list) or len(hints) > MAX_ADDRS:
            raise WireError("bad-field", f"each record takes a list of at most {MAX_ADDRS} addresses")
        if not all(type(a) is str and 0 < len(a) <= MAX_STR and a.startswith("/") for a in hints):
            raise WireError("bad-field", "addresses must be multiaddr strings")
        addrs.append(tuple(hints))
    neighbour = fields.get("nb", False)
    if type(neighbour) is not bool:
        raise WireError("bad-field", "'nb' must be a boolean")
    return Offer(read_int(fields, "r", hi=limits.max_round), view, tuple(addrs), neighbour)


class Roster:
    """One node's members (signed records) and their addresses (see the module docstring)."""

    def __init__(
        self,
        me: PeerId,
        signer: Signer,
        verifier: Verifier,
        *,
        addrs: Sequence[str] = (),
        policy: AdmissionPolicy | None = None,
        max_members: int = MAX_MEMBERS,
        refresh: int = 10,
    ) -> None:
        self.me = me
        self.view = View(me, signer=signer, verifier=verifier, refresh=refresh)
        self.view.own(1, 0, now_round=0)  # joined, at round 0
        self.max_members = max_members
        self.gate = Gate(policy or AdmissionPolicy(per_introducer=64))
        self.addrs: dict[PeerId, tuple[str, ...]] = {me: tuple(addrs)[:MAX_ADDRS]}
        self._self_said: set[PeerId] = {me}  # peers whose hints came from themselves
        self.round = 0
        self.refused = 0  # records refused (signature, claim, admission, full roster)
        self.asked: dict[PeerId, None] = {}  # members that chose this node as a neighbour, not yet taken

    # ------------------------------------------------------------------ queries

    def is_member(self, peer: PeerId) -> bool:
        return peer != self.me and self.view.is_member(peer)

    def is_known(self, peer: PeerId) -> bool:
        """Whether ``peer`` is a member this node knows of (for the transport's stranger budget)."""
        return self.is_member(peer)

    def members(self) -> tuple[PeerId, ...]:
        """The other peers whose newest record says joined, sorted."""
        return tuple(p for p in self.view.ids() if p != self.me and self.view.is_member(p))

    def addresses(self, peer: PeerId) -> tuple[str, ...]:
        return self.addrs.get(peer, ())

    # ------------------------------------------------------------------ this node's own record

    def set_round(self, round_: int) -> None:
        """The node reached ``round_``: its activity claim is re-signed every ``refresh`` rounds."""
        self.round = max(self.round, round_)
        self.view.touch(self.me, self.round, now_round=self.round)

    def leave(self) -> None:
        """Sign a "left" record (an even counter): peers that hear it drop this node."""
        counter = self.view.counter(self.me)
        if counter % 2 == 1:
            self.view.own(counter + 1, self.round, now_round=self.round)

    # ------------------------------------------------------------------ exchange

    def offer(
        self, *, limit: int | None = None, rng: np.random.Generator | None = None, neighbour: bool = False
    ) -> Offer:
        """Every signed record this node holds (its own first), up to ``limit`` (random ones beyond it)."""
        delta = self.view.delta()
        items = list(zip(delta.ids, delta.active, delta.counters, delta.sigs, strict=True))
        items.sort(key=lambda item: item[0] != self.me)
        cap = self.max_members if limit is None else min(limit, self.max_members)
        if len(items) > cap:
            rest = items[1:]
            picks = (rng or np.random.default_rng()).choice(len(rest), size=cap - 1, replace=False)
            items = [items[0], *(rest[int(i)] for i in sorted(picks))]
        if not items:
            return Offer(self.round, ViewDelta(), neighbour=neighbour)
        ids, active, counters, sigs = zip(*items, strict=True)
        return Offer(
            self.round,
            ViewDelta(ids, active, counters, sigs),
            tuple(self.addrs.get(p, ()) for p in ids),
            neighbour,
        )

    def receive(self, sender: PeerId, offer: Offer) -> list[PeerId]:
        """Merge a peer's offer; returns the peers that became members through it. Records whose signature
        does not verify, that claim a round far ahead, or whose newcomer the admission policy or the bound
        refuses are dropped and counted in ``refused``."""
        max_claim = max(self.round, offer.round) + 1_000_000  # claims are activity hints, not trusted rounds
        joined: list[PeerId] = []
        hints = offer.addrs or ((),) * len(offer.view)
        for (peer, claim, counter, sig), addrs in zip(offer.view.signed(), hints, strict=True):
            if peer == self.me:
                continue
            was = self.view.is_member(peer)
            admit = self._admit(sender)
            result = self.view.accept(
                peer, counter, claim, sig, now_round=self.round, max_claim=max_claim, admit=admit
            )
            if result is None:
                self.refused += 1
                continue
            if addrs and (peer == sender or peer not in self._self_said):
                self.addrs[peer] = tuple(addrs)[:MAX_ADDRS]
                if peer == sender:
                    self._self_said.add(peer)
            if not was and self.view.is_member(peer):
                joined.append(peer)
        if offer.neighbour and self.is_member(sender) and len(self.asked) < self.max_members:
            self.asked[sender] = None
        return joined

    def take_asked(self) -> list[PeerId]:
        """The members that chose this node as a neighbour since the last call (still members)."""
        asked = [p for p in self.asked if self.is_member(p)]
        self.asked.clear()
        return asked

    def _admit(self, introducer: PeerId) -> Any:
        def admit(peer: PeerId) -> bool:
            if len(self.view) >= self.max_members:
                return False
            return self.gate.admit(peer, introducer, self.round)

        return admit


def choose_neighbours(
    current: Iterable[PeerId],
    members: Sequence[PeerId],
    degree: int,
    rng: np.random.Generator,
    *,
    down: Iterable[PeerId] = (),
) -> tuple[PeerId, ...]:
    """``degree`` neighbours: the current ones that are still members and not down, topped up with members
    drawn uniformly at random (sorted result)."""
    gone = set(down)
    member_set = set(members)
    keep = sorted(p for p in set(current) if p in member_set and p not in gone)[:degree]
    pool = [p for p in members if p not in gone and p not in keep]
    need = min(degree - len(keep), len(pool))
    if need > 0:
        picks = rng.choice(len(pool), size=need, replace=False)
        keep.extend(pool[int(i)] for i in picks)
    return tuple(sorted(keep))


@runtime_checkable
class Reconfigurable(Protocol):
    """A protocol whose peers can change between rounds (D-PSGD's neighbours, Epidemic Learning's members)."""

    def set_peers(self, peers: Sequence[PeerId], now: float) -> list[Action]:
        """Use ``peers`` from now on; returns the actions that follow (models for new neighbours)."""
        ...


class Overlay:
    """A D-PSGD node's neighbours on a joined network: at least ``degree`` of the members it knows.

    Between rounds :meth:`next` keeps every current neighbour that is still a member and alive (neighbours
    that chose this node stay too, so the overlay is undirected), drops one that left (its signed record
    says so) or that was connected once and is no longer, or that never connected for ``patience`` rounds,
    and tops the set up to ``degree`` with members drawn at random."""

    def __init__(self, degree: int, rng: np.random.Generator, *, patience: int = 3) -> None:
        if degree < 1:
            raise ValueError(f"degree must be >= 1, got {degree}")
        self.degree = degree
        self.rng = rng
        self.patience = patience
        self._seen: set[PeerId] = set()  # neighbours seen connected at least once
        self._age: dict[PeerId, int] = {}  # rounds a neighbour has been one without ever connecting
        self._dead: set[PeerId] = set()  # dropped as dead: not drawn again until seen connected
        self.replaced = 0  # neighbours dropped as dead or gone

    def next(
        self, current: Sequence[PeerId], members: Sequence[PeerId], connected: Iterable[PeerId]
    ) -> tuple[PeerId, ...]:
        live = set(connected)
        self._dead -= live
        member_set = set(members)
        keep = []
        for p in current:
            if p in live:
                self._seen.add(p)
                self._age.pop(p, None)
            age = self._age[p] = self._age.get(p, 0) + (p not in live and p not in self._seen)
            dead = (p in self._seen and p not in live) or age > self.patience
            if p in member_set and not dead:
                keep.append(p)
            else:
                self.replaced += 1
                self._seen.discard(p)
                self._age.pop(p, None)
                if dead:
                    self._dead.add(p)
        if len(keep) >= self.degree:
            return tuple(sorted(keep))
        return choose_neighbours(keep, [m for m in members if m not in self._dead], self.degree, self.rng)
