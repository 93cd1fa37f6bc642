from __future__ import annotations

import pytest

from phalanx.node.bans import BanList


def test_threshold_strikes_within_window_ban_for_duration() -> None:
    bans = BanList(threshold=3, window=10, duration=100)
    assert not bans.strike("p", 0) and not bans.strike("p", 1)
    assert bans.strike("p", 2)
    assert bans.is_banned("p", 50) and not bans.is_banned("q", 50)
    assert not bans.is_banned("p", 102.5)


def test_strikes_outside_the_window_are_forgotten() -> None:
    bans = BanList(threshold=3, window=10, duration=100)
    for t in (0, 11, 22, 33):
        assert not bans.strike("p", t)
    assert not bans.is_banned("p", 34)


def test_ban_survives_a_restart_with_a_different_clock() -> None:
    bans = BanList(threshold=1, window=10, duration=100)
    bans.strike("p", 1000)
    saved = bans.to_dict(1040)
    assert saved == {"p": 60}
    fresh = BanList(threshold=1, window=10, duration=100)
    fresh.restore(saved, 5)
    assert fresh.is_banned("p", 64) and not fresh.is_banned("p", 66)


def test_bad_settings() -> None:
    with pytest.raises(ValueError):
        BanList(threshold=0)
