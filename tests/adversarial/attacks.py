"""The red team's attacks on a live node, each from outsider hosts with fresh keys, and one runner that
measures what the victim went through: rejections, rounds during the attack against its rate without,
RSS and descriptors, the longest pause between two rounds, and whether it still mixes its neighbour's
models afterwards. Used by ``tests/adversarial/test_red_team.py`` and ``scripts/red_team.py``."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from phalanx.gossip.wire import FRAME_HEADER, frame
from phalanx.node.transport import Libp2pTransport, TransportError

from .bombs import empty_lists
from .harness import Victim, outsiders

Hosts = list[tuple[Libp2pTransport, str]]

MAX_PAUSE = 2.0  # seconds: the longest a victim may go without completing a round during an attack
MAX_RSS_GROWTH = 100.0  # MB
METRICS_SOCKETS = 500
METRICS_FD_SLACK = 16 + 16  # the metrics server's cap, and a margin for libp2p's own churn


@dataclass
class Outcome:
    attack: str
    rejected_lines: int  # "rejected" log lines written during the attack
    rejected_counted: int  # rejections counted in /status during the attack
    rounds_during: int
    rounds_expected: float  # at the rate measured just before the attack, over the same time
    max_pause: float
    rss_before: float
    rss_peak: float
    rss_after: float
    fds_before: int
    fds_peak: int
    attackers: int
    attackers_struck: int  # attackers with at least one rejection logged against them
    attackers_banned: int
    accepted_after: int  # neighbour models mixed in the rounds after the attack
    rounds_after: int
    problems: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return "held" if not self.problems else "FAILED: " + "; ".join(self.problems)


@dataclass(frozen=True)
class Attack:
    name: str
    outsiders: int
    run: Callable[[Victim, Hosts], Awaitable[None]]
    check: Callable[[Outcome, Victim, list[str], int], list[str]] = lambda o, v, peers, mark: []


async def _quietly(aw: Awaitable[None]) -> None:
    with contextlib.suppress(TransportError):  # the victim resets streams it refuses
        await aw


# ---------------------------------------------------------------- the attacks


async def decode_bomb(victim: Victim, hosts: Hosts) -> None:
    """Each outsider sends one 6 MB frame of six million empty lists (under the default frame limit)."""
    bomb = frame(empty_lists())
    async with trio.open_nursery() as nursery:
        for host, name in hosts:
            nursery.start_soon(_quietly, host.send_raw(name, bomb))
    peers = {host.peer_id for host, _ in hosts}
    await victim.until(lambda: peers <= {e["peer"] for e in victim.of("rejected")}, timeout=30)


def check_decode_bomb(o: Outcome, v: Victim, peers: list[str], mark: int) -> list[str]:
    bombs = [e for e in v.events[mark:] if e.get("event") == "rejected" and e.get("peer") in peers]
    # a D-PSGD node decodes under the model-only limits, where the bomb does not even fit in a frame;
    # under the view limits (MoDeST) the structural scan refuses it
    reasons = {e.get("reason") for e in bombs}
    if not reasons or not reasons <= {"too-many-items", "frame-too-large"}:
        return [f"bombs rejected as {sorted(str(r) for r in reasons)}, not too-many-items or frame-too-large"]
    return []


async def stream_flood(victim: Victim, hosts: Hosts) -> None:
    """One outsider opens 200 idle streams, 200 with half a header, and 80 that send 4 MB of a 6 MB frame
    and stop (what raised a node's RSS by 300 MB for good on main)."""
    host, name = hosts[0]
    nearly_full = FRAME_HEADER.pack(6_000_000) + b"\1" * 4_000_000
    limiter = trio.CapacityLimiter(32)

    async def one(data: bytes) -> None:
        async with limiter:
            await _quietly(host.send_raw(name, data, close=False))

    async with trio.open_nursery() as nursery:
        for data in [b""] * 200 + [b"\0\0"] * 200 + [nearly_full] * 80:
            nursery.start_soon(one, data)
    await victim.until(lambda: victim.banned(host.peer_id), timeout=20)


def check_stream_flood(o: Outcome, v: Victim, peers: list[str], mark: int) -> list[str]:
    return [] if o.attackers_banned == 1 else ["the flooding outsider was never banned"]


async def banned_flood(victim: Victim, hosts: Hosts) -> None:
    """An outsider gets itself banned, then opens 300 more streams."""
    host, name = hosts[0]
    for _ in range(8):
        await _quietly(host.send_raw(name, frame(b"\xc1")))
    await victim.until(lambda: victim.banned(host.peer_id))
    for _ in range(300):
        await _quietly(host.send_raw(name, frame(b"\xc1")))
    await victim.until(lambda: bool(victim.rejected("banned", host.peer_id)))


def check_banned_flood(o: Outcome, v: Victim, peers: list[str], mark: int) -> list[str]:
    lines = [e for e in v.events[mark:] if e.get("event") == "rejected" and e.get("reason") == "banned"]
    return [] if len(lines) <= 3 else [f"{len(lines)} log lines for one banned peer's 300 streams"]


async def metrics_slowloris(victim: Victim, hosts: Hosts) -> None:
    """500 TCP connections to the metrics port that never send a request, held for 30 of the victim's rounds."""
    sockets = []
    try:
        for _ in range(METRICS_SOCKETS):
            sockets.append(await trio.open_tcp_stream("127.0.0.1", victim.metrics_port))
        await victim.rounds_take(30)
        victim.sample()
    finally:
        for s in sockets:
            await s.aclose()


def check_slowloris(o: Outcome, v: Victim, peers: list[str], mark: int) -> list[str]:
    held = o.fds_peak - o.fds_before
    return [] if held <= METRICS_FD_SLACK else [f"{held} more descriptors for {METRICS_SOCKETS} slow sockets"]


ATTACKS = {
    "decode-bomb": Attack("decode-bomb", 4, decode_bomb, check_decode_bomb),
    "stream-flood": Attack("stream-flood", 1, stream_flood, check_stream_flood),
    "banned-flood": Attack("banned-flood", 1, banned_flood, check_banned_flood),
    "metrics-slowloris": Attack("metrics-slowloris", 0, metrics_slowloris, check_slowloris),
}


# ---------------------------------------------------------------- the runner


def _rejected_total(status: dict[str, object]) -> int:
    rejected = status.get("rejected", {})
    return sum(int(v) for v in rejected.values()) if isinstance(rejected, dict) else 0


async def run_attack(attack: Attack, victim: Victim, *, baseline_rounds: int = 30) -> Outcome:
    """Measure the victim's round rate, run ``attack`` against it, and let it run 20 rounds more."""
    rate = baseline_rounds / await victim.rounds_take(baseline_rounds)
    victim.reset_peaks()
    rss_before, fds_before = victim.rss_mb(), victim.fds()
    rejected_before = _rejected_total(await victim.status())
    mark, round_before, t0 = len(victim.events), victim.round, trio.current_time()
    problems: list[str] = []
    async with outsiders(victim, attack.outsiders) as hosts:
        peers = [host.peer_id for host, _ in hosts]
        try:
            await attack.run(victim, hosts)
        except trio.TooSlowError:
            problems.append("the victim never reacted to the attack")
        window = trio.current_time() - t0
        rounds_during = victim.round - round_before
        rss_peak, fds_peak = victim.peak_rss_mb, victim.peak_fds
        after_mark, round_after = len(victim.events), victim.round
        with contextlib.suppress(trio.TooSlowError, AssertionError):
            await victim.rounds_take(20, timeout=20)
    during = victim.events[mark:after_mark]
    after = [e for e in victim.events[after_mark:] if e.get("event") == "round"]
    times = [float(e["t"]) for e in victim.events[mark:] if e.get("event") == "round"]
    pauses = [b - a for a, b in itertools.pairwise(times)]
    outcome = Outcome(
        attack=attack.name,
        rejected_lines=sum(1 for e in during if e.get("event") == "rejected"),
        rejected_counted=_rejected_total(await victim.status()) - rejected_before,
        rounds_during=rounds_during,
        rounds_expected=rate * window,
        max_pause=max(pauses, default=window),
        rss_before=rss_before,
        rss_peak=max(rss_peak, victim.rss_mb()),
        rss_after=victim.rss_mb(),
        fds_before=fds_before,
        fds_peak=fds_peak,
        attackers=len(peers),
        attackers_struck=sum(1 for p in peers if victim.rejected(peer=p)),
        attackers_banned=sum(1 for p in peers if victim.banned(p)),
        accepted_after=sum(int(e.get("accepted", 0)) for e in after),
        rounds_after=victim.round - round_after,
        problems=problems,
    )
    if outcome.max_pause > MAX_PAUSE:
        problems.append(f"the victim went {outcome.max_pause:.1f} s without completing a round")
    if outcome.rss_peak - rss_before > MAX_RSS_GROWTH:
        problems.append(f"RSS grew by {outcome.rss_peak - rss_before:.0f} MB")
    if outcome.attackers_struck < outcome.attackers:
        problems.append(f"{outcome.attackers - outcome.attackers_struck} attackers never struck")
    if outcome.rounds_after < 20 or outcome.accepted_after < 10:
        problems.append(
            f"after the attack: {outcome.rounds_after} rounds, {outcome.accepted_after} neighbour models mixed"
        )
    problems += attack.check(outcome, victim, peers, mark)
    return outcome
