"""Bans for peers that keep sending invalid messages, kept by phalanx and keyed by peer id.

libp2p forgets a peer's score when it disconnects, so a misbehaving peer could reconnect with a clean
slate; here every rejected message is a *strike* against the peer id, ``threshold`` strikes within
``window`` seconds ban it for ``duration`` seconds, and the record outlives connections (and, through the
checkpoint, restarts). Time comes in as an argument, so tests drive it without sleeping.

Keys cost an attacker nothing, so the records are bounded: at most ``max_tracked`` peers with strikes and
``max_banned`` bans. Over a bound, records that no longer matter (strikes outside the window, expired bans)
go first, then the oldest ones.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class BanList:
    threshold: int = 5
    window: float = 60.0
    duration: float = 300.0
    max_tracked: int = 100_000
    max_banned: int = 100_000
    _strikes: dict[str, deque[float]] = field(default_factory=dict)
    _banned_until: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError(f"ban threshold must be >= 1, got {self.threshold}")
        if not self.window > 0 or not self.duration >= 0:
            raise ValueError("ban window must be > 0 and duration >= 0")
        if self.max_tracked < 1 or self.max_banned < 1:
            raise ValueError("ban record bounds must be >= 1")

    def strike(self, peer: str, now: float) -> bool:
        """Count one rejected message from ``peer``; returns True if this strike bans it."""
        if self.is_banned(peer, now):
            return False
        if peer not in self._strikes and len(self._strikes) >= self.max_tracked:
            self._forget_strikes(now)
        times = self._strikes.setdefault(peer, deque())
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.threshold:
            if len(self._banned_until) >= self.max_banned:
                self._forget_bans(now)
            self._banned_until[peer] = now + self.duration
            del self._strikes[peer]
            return True
        return False

    def _forget_strikes(self, now: float) -> None:
        for p in [p for p, times in self._strikes.items() if not times or times[-1] <= now - self.window]:
            del self._strikes[p]
        while len(self._strikes) >= self.max_tracked:
            del self._strikes[next(iter(self._strikes))]  # the peer struck first

    def _forget_bans(self, now: float) -> None:
        for p in [p for p, until in self._banned_until.items() if now >= until]:
            del self._banned_until[p]
        while len(self._banned_until) >= self.max_banned:
            del self._banned_until[next(iter(self._banned_until))]  # the oldest ban ends first

    def stats(self) -> dict[str, int]:
        """Peers with strikes on record, and bans on record (some possibly expired, not yet forgotten)."""
        return {"tracked": len(self._strikes), "banned": len(self._banned_until)}

    def is_banned(self, peer: str, now: float) -> bool:
        until = self._banned_until.get(peer)
        if until is None:
            return False
        if now >= until:
            del self._banned_until[peer]
            return False
        return True

    def banned(self, now: float) -> list[str]:
        return sorted(p for p in list(self._banned_until) if self.is_banned(p, now))

    def to_dict(self, now: float) -> dict[str, float]:
        """Remaining ban seconds per peer (relative, so they survive a restart on a different clock)."""
        return {p: self._banned_until[p] - now for p in self.banned(now)}

    def restore(self, remaining: dict[str, Any], now: float) -> None:
        for peer, seconds in remaining.items():
            if len(self._banned_until) >= self.max_banned:
                break
            if isinstance(peer, str) and isinstance(seconds, (int, float)) and seconds > 0:
                self._banned_until[peer] = now + min(float(seconds), self.duration)
