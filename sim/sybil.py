"""Sybil capture: how much of MoDeST's sample an attacker with K fresh keys takes, under an admission policy.

The simulator's own late joiners are initial members; a Sybil attacker is not. This drives one honest
node's membership view (:class:`~phalanx.gossip.membership.View`, signed records, the node's admission
:class:`~phalanx.gossip.modest.admission.Gate`) through the rounds of a run in which the attacker offers a
validly signed join for each of its K keys every round, two ways at once, as a real attacker would:

- **directly**: each key sends its own ``Join`` (the key is its own introducer), and
- **forwarded**: one attacker key already admitted lists all the others' records in the view it sends
  with its model (one introducer for all of them).

A key admitted in round r is active from ``r + join_delay`` (MoDeST's join delay). Capture is the share of
each round's trainer and aggregator samples (computed from that view, as every node computes them) that
are the attacker's, averaged over the run's last half, and at its last round.

The proof-of-work policy prices identities, not keys: of K keys the attacker generated, only those whose
peer id carries ``pow_bits`` of work are admissible (about K / 2 ** pow_bits).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from phalanx.gossip.identity import sim_keyring
from phalanx.gossip.membership import View
from phalanx.gossip.modest.admission import AdmissionPolicy, Gate
from phalanx.gossip.sampling import AGGREGATORS, TRAINERS, sample


def _admit(gate: Gate, introducer: str, round_: int, peer: str) -> bool:
    return gate.admit(peer, introducer, round_)


@dataclass(frozen=True, slots=True, kw_only=True)
class Capture:
    admitted: int  # attacker keys members of the honest node's view at the end
    mean: float  # share of the samples the attacker held, averaged over the run's last half
    last: float  # the same, in the last round


def sybil_capture(
    policy: AdmissionPolicy | None,
    *,
    keys: int,
    honest: int = 100,
    rounds: int = 40,
    s: int = 10,
    a: int = 2,
    join_delay: int = 2,
    inactivity: int = 1000,
    seed: int = 0,
) -> Capture:
    """Run ``rounds`` rounds of the attack above against one honest node; ``policy=None`` is an open network."""
    members = [f"h{i:03d}" for i in range(honest)]
    sybils = [f"sybil-{seed}-{i}" for i in range(keys)]
    signers, verifier = sim_keyring([*members, *sybils], seed=seed)
    view = View(members[0], members, signer=signers[members[0]], verifier=verifier)
    gate = Gate(policy or AdmissionPolicy())
    shares: list[float] = []
    for r in range(rounds):
        inside = [p for p in sybils if view.is_member(p)]
        introducer = inside[0] if inside else None
        for p in sybils:
            if p in view.records:
                continue
            offered = [p] if introducer is None else [p, introducer]  # directly, then forwarded
            for via in offered:
                admit = partial(_admit, gate, via, r)
                if view.accept(
                    p, 1, r, signers[p].sign(1, r), now_round=r, active_from=r + join_delay, admit=admit
                ):
                    break
        chosen = sample(view, r, s, inactivity=inactivity, role=TRAINERS)
        chosen += sample(view, r, a, inactivity=inactivity, role=AGGREGATORS)
        shares.append(sum(p in sybils for p in chosen) / len(chosen))
    tail = shares[len(shares) // 2 :]
    return Capture(
        admitted=sum(view.is_member(p) for p in sybils), mean=sum(tail) / len(tail), last=shares[-1]
    )
