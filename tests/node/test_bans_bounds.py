"""The ban list under a stream of fresh keys: its records stay bounded, and bounding them never lets a
peer that is banned now, or one striking now, off early."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from phalanx.node.bans import BanList


def test_a_million_fresh_keys_cannot_grow_the_records_past_the_bounds() -> None:
    bans = BanList(threshold=2, window=10, duration=100, max_tracked=1000, max_banned=500)
    for i in range(20_000):
        bans.strike(f"fresh-{i}", i * 0.001)  # one strike each: never banned, always new
        bans.strike(f"banned-{i % 3000}", i * 0.001)  # two strikes: banned
    stats = bans.stats()
    assert stats["tracked"] <= 1000 and stats["banned"] <= 500


@given(st.lists(st.integers(0, 50), min_size=1, max_size=300), st.integers(1, 20))
def test_bounds_forget_only_what_no_longer_matters_first(peers: list[int], cap: int) -> None:
    """Strikes one second apart; a peer banned within the last ``duration`` stays banned while there are
    fewer recent bans than the bound."""
    bans = BanList(threshold=2, window=3, duration=5, max_tracked=cap, max_banned=cap)
    banned_at: dict[str, float] = {}
    now = 0.0
    for p in peers:
        now += 1
        if bans.strike(f"p{p}", now):
            banned_at[f"p{p}"] = now
    recent = {p for p, t in banned_at.items() if now < t + 5}
    if len(recent) <= cap - 1:
        assert all(bans.is_banned(p, now) for p in recent)
    assert bans.stats()["tracked"] <= cap and bans.stats()["banned"] <= cap
