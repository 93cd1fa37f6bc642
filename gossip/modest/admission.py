"""Who may become a member: MoDeST's defences against a Sybil attacker minting fresh keys.

A signed record proves that a key speaks for itself, not that the key deserves a place in the samples: an
attacker with K fresh keys can sign K valid join records. The policies, each optional and combinable:

- **allow-list** (permissioned deployments, ``--members FILE``): only listed peer ids ever become members;
- **proof of work** on the identity: a newcomer's peer id must hash (SHA-256 of ``"phalanx-pow:" + id``) to
  ``pow_bits`` leading zero bits, so minting one costs about ``2 ** pow_bits`` key generations (about 50 us
  each here) and an honest node pays it once (S/Kademlia's static crypto puzzle, on the peer id);
- **bounded growth**: at most ``per_round`` newcomers admitted per round, and at most ``per_introducer`` per
  round from the records one peer forwards, so K fresh keys take at least K / per_round rounds to get in
  and one introducer cannot flood a view.

The initial membership is admitted by construction. A refused newcomer's record is dropped and counted; it
can be offered again later (the caps reset each round).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from phalanx.gossip.events import PeerId

POW_DOMAIN = b"phalanx-pow:"


def pow_ok(peer: PeerId, bits: int) -> bool:
    """Whether ``peer``'s id carries ``bits`` leading zero bits of proof of work."""
    if bits <= 0:
        return True
    digest = int.from_bytes(hashlib.sha256(POW_DOMAIN + peer.encode()).digest(), "big")
    return digest >> (256 - bits) == 0


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionPolicy:
    allow: frozenset[PeerId] | None = None
    pow_bits: int = 0
    per_round: int = 0  # 0: no cap
    per_introducer: int = 0  # 0: no cap

    def __post_init__(self) -> None:
        if not 0 <= self.pow_bits <= 64 or self.per_round < 0 or self.per_introducer < 0:
            raise ValueError("pow_bits must be in [0, 64], per_round and per_introducer >= 0")


@dataclass(slots=True)
class Gate:
    """One node's admission books: newcomers admitted in the current round, in all and per introducer."""

    policy: AdmissionPolicy
    round: int = -1
    admitted: int = 0
    by_introducer: dict[PeerId, int] = field(default_factory=dict)
    refused: int = 0

    def admit(self, peer: PeerId, introducer: PeerId, round_: int) -> bool:
        """May ``peer``, unknown so far, become a member on ``introducer``'s word in round ``round_``?"""
        policy = self.policy
        if round_ != self.round:
            self.round, self.admitted, self.by_introducer = round_, 0, {}
        ok = (
            (policy.allow is None or peer in policy.allow)
            and pow_ok(peer, policy.pow_bits)
            and not (policy.per_round and self.admitted >= policy.per_round)
            and not (policy.per_introducer and self.by_introducer.get(introducer, 0) >= policy.per_introducer)
        )
        if not ok:
            self.refused += 1
            return False
        self.admitted += 1
        self.by_introducer[introducer] = self.by_introducer.get(introducer, 0) + 1
        return True
