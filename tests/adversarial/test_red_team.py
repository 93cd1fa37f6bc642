"""The red team against real node processes: each attack of issue 13 from outsider hosts with fresh keys on
127.0.0.1; the victim keeps completing rounds and mixing its neighbour's models, strikes or counts the
attacker, and stays within its memory and descriptor budgets (see ``attacks.py`` for each check)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .attacks import ATTACKS, run_attack
from .harness import honest_pair

pytestmark = pytest.mark.network


@pytest.mark.parametrize("name", list(ATTACKS))
async def test_the_victim_holds(name: str, tmp_path: Path) -> None:
    async with honest_pair(tmp_path) as (victim, _neighbour):
        outcome = await run_attack(ATTACKS[name], victim)
    assert not outcome.problems, outcome
