"""The red team: every covered attack of issue 13 against a live network of real node processes, one table.

    .venv/bin/python scripts/red_team.py [--attack NAME ...] [--no-decode]

D-PSGD: for each attack a fresh pair of honest nodes (each the other's neighbour) runs on 127.0.0.1; outsider
hosts with fresh keys (never configured anywhere) attack the first one. The table shows, per attack: the
rejections the victim logged and counted, the rounds it completed during the attack against the rounds
its own rate just before predicts for that time, its longest pause between two rounds, its RSS before /
at the peak / after, its descriptors before / at the peak, the attackers it struck and banned, and the
verdict (the checks of ``tests/adversarial/attacks.py``). A first table times the decode of hostile
bodies per MB under the default limits and D-PSGD's model-only limits.

MoDeST: one live network of 4 honest nodes takes every MoDeST attack of issue 13 in turn (the 2^48 pong,
the eviction view, 5,000 fake ids, pushed aggregates, trained models from a non-sampled peer); the table
shows, per attack, how many times the nodes counted it, how many struck the attacker, the seconds the
network took for its rounds before and during, the worst accuracy reported before and after, and the
largest RSS growth (the checks of ``tests/adversarial/live.py``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from phalanx.gossip.messages import decode
from phalanx.gossip.wire import Limits, WireError
from tests.adversarial.attacks import ATTACKS, Outcome, run_attack
from tests.adversarial.bombs import BOMBS, sized
from tests.adversarial.harness import DIM, honest_pair
from tests.adversarial.live import AHEAD, COUNTED, ROUNDS, ModestOutcome, modest_network, run_modest_attack

MLP_DIM = 50_890


def decode_table() -> None:
    """Seconds per MB to refuse each hostile body (best of three), for the MLP's limits."""
    limits = [("default", Limits(dim=MLP_DIM))]
    if hasattr(Limits, "model_only"):
        limits.append(("model-only", Limits.model_only(MLP_DIM)))
    print(f"{'limits':>10}  {'body':>13}  {'MB':>6}  {'ms':>9}  {'ms/MB':>9}  reason")
    for label, lim in limits:
        for name in BOMBS:
            body = sized(name, lim.max_frame)
            best, reason = float("inf"), "accepted"
            for _ in range(1 if len(body) > 1_000_000 and label == "default" else 3):
                t = time.perf_counter()
                try:
                    decode(body, lim)
                except WireError as exc:
                    reason = exc.reason
                best = min(best, time.perf_counter() - t)
            mb = len(body) / 1e6
            per_mb = (
                f"{best * 1e3 / mb:9.2f}" if mb >= 0.05 else f"{'-':>9}"
            )  # tiny bodies: per MB means nothing
            print(f"{label:>10}  {name:>13}  {mb:6.2f}  {best * 1e3:9.2f}  {per_mb}  {reason}")
    print()


def row(o: Outcome) -> str:
    return (
        f"{o.attack:>17}  {o.rejected_lines:>5}/{o.rejected_counted:<5}  "
        f"{o.rounds_during:>5}/{o.rounds_expected:<6.0f}  {o.max_pause:6.2f}  "
        f"{o.rss_before:5.0f}/{o.rss_peak:5.0f}/{o.rss_after:<5.0f}  {o.fds_before:>4}/{o.fds_peak:<5}  "
        f"{o.attackers_struck}/{o.attackers_banned} of {o.attackers}  {o.verdict}"
    )


async def attack_table(names: list[str]) -> int:
    print(
        f"{'attack':>17}  {'rejected':>11}  {'rounds':>12}  {'pause':>6}  {'RSS MB':>17}  {'fds':>10}  "
        f"{'struck/banned':>13}  verdict"
    )
    print(
        f"{'':>17}  {'log/count':>11}  {'during/exp':>12}  {'max s':>6}  {'before/peak/after':>17}  "
        f"{'before/peak':>10}"
    )
    failed = 0
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            async with honest_pair(Path(tmp)) as (victim, _neighbour):
                outcome = await run_attack(ATTACKS[name], victim)
        failed += bool(outcome.problems)
        print(row(outcome), flush=True)
    return failed


def modest_row(o: ModestOutcome) -> str:
    return (
        f"{o.attack:>17}  {o.counted:>7}  {o.struck}/{o.nodes:<4}  "
        f"{ROUNDS / o.seconds_before:6.1f}/{(AHEAD + ROUNDS) / o.seconds_during:<6.1f}  "
        f"{o.acc_before:5.3f}/{o.acc_after:<5.3f}  {o.rss_growth:8.1f}  {o.verdict}"
    )


async def modest_table(names: list[str]) -> int:
    """Every MoDeST attack against one live 4-node network (each attack leaves it as it found it)."""
    print(
        f"{'attack':>17}  {'counted':>7}  {'struck':>6}  {'rounds/s':>13}  {'worst acc':>11}  {'RSS +MB':>8}  verdict"
    )
    print(f"{'':>17}  {'':>7}  {'':>6}  {'before/during':>13}  {'before/after':>11}")
    failed = 0
    with tempfile.TemporaryDirectory() as tmp, modest_network(Path(tmp)) as net:
        for name in names:
            outcome = await run_modest_attack(net, name)
            failed += bool(outcome.problems)
            print(modest_row(outcome), flush=True)
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--attack", action="append", choices=[*ATTACKS, *COUNTED], help="only these (repeatable)"
    )
    parser.add_argument("--no-decode", action="store_true", help="skip the decode-time table")
    parser.add_argument("--decode-only", action="store_true", help="only the decode-time table")
    args = parser.parse_args()
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)  # refused streams are the point, not news
    if not args.no_decode:
        decode_table()
    if args.decode_only:
        return 0
    chosen = args.attack or [*ATTACKS, *COUNTED]
    failed = 0
    dpsgd = [a for a in chosen if a in ATTACKS]
    if dpsgd:
        print(f"victims: pairs of honest nodes, blobs + logreg ({DIM} parameters), D-PSGD")
        failed += trio.run(attack_table, dpsgd)
        print()
    modest = [a for a in chosen if a in COUNTED]
    if modest:
        print(
            "victims: one live network of 4 honest MoDeST nodes (s=2, blobs + logreg); each attack sent twice "
            "to every node by an outsider with a fresh key; network rounds/s over 4 rounds before, 44 from the attack on"
        )
        failed += trio.run(modest_table, modest)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
