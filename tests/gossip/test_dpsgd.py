"""D-PSGD as a state machine, driven by hand: what it sends, waits for, mixes and drops."""

from __future__ import annotations

import pytest
import torch

from phalanx.gossip.dpsgd import DPSGD, DPSGDConfig
from phalanx.gossip.events import (
    CancelTimer,
    MessageReceived,
    PeerDown,
    PenalisePeer,
    RoundCompleted,
    Send,
    SetTimer,
    TimerFired,
    Train,
    TrainingDone,
)
from phalanx.gossip.messages import ModelUpdate

D = 4


def vec(value: float) -> torch.Tensor:
    return torch.full((D,), float(value))


def make(**kw) -> DPSGD:
    settings = {"neighbours": ("a", "b"), "weights": {"a": 0.25, "b": 0.25}, "round_timeout": 5.0, **kw}
    return DPSGD(DPSGDConfig(**settings), vec(0))


def kinds(actions) -> list[str]:
    return [type(a).__name__ for a in actions]


def trained(p: DPSGD, value: float, now: float = 0.0):
    return p.handle(TrainingDone(round=p.round, params=vec(value)), now)


def msg(p: DPSGD, peer: str, value: float, round_: int | None = None, step: int = 0, now: float = 0.0):
    r = p.round if round_ is None else round_
    return p.handle(
        MessageReceived(peer=peer, message=ModelUpdate(round=r, step=step, params=vec(value))), now
    )


def test_round_trains_sends_waits_and_mixes() -> None:
    p = make()
    (train,) = p.start(0.0)
    assert isinstance(train, Train) and train.round == 0 and train.steps == 1
    acts = trained(p, 4.0, now=1.0)
    sends = [a for a in acts if isinstance(a, Send)]
    assert {s.peer for s in sends} == {"a", "b"}
    assert sends[0].message is sends[1].message  # one object for all neighbours
    (timer,) = [a for a in acts if isinstance(a, SetTimer)]
    assert timer.deadline == 6.0
    assert msg(p, "a", 8.0) == []
    acts = msg(p, "b", 0.0)
    assert kinds(acts) == ["CancelTimer", "RoundCompleted", "Train"]
    done = acts[1]
    assert isinstance(done, RoundCompleted) and done.round == 0
    assert torch.allclose(done.params, vec(0.5 * 4 + 0.25 * 8 + 0.25 * 0))
    assert p.round == 1 and isinstance(acts[2], Train) and acts[2].round == 1


def test_timeout_mixes_what_arrived_and_missing_weight_stays_home() -> None:
    p = make()
    p.start(0.0)
    trained(p, 4.0)
    msg(p, "a", 8.0)
    acts = p.handle(TimerFired(name="dpsgd/0/0"), 5.0)
    done = next(a for a in acts if isinstance(a, RoundCompleted))
    assert torch.allclose(done.params, vec(0.75 * 4 + 0.25 * 8))
    assert p.counters.timeouts == 1


def test_late_message_is_dropped_not_mixed() -> None:
    p = make()
    p.start(0.0)
    trained(p, 1.0)
    msg(p, "a", 1.0)
    msg(p, "b", 1.0)
    assert p.round == 1
    assert msg(p, "a", 100.0, round_=0) == []
    assert p.counters.late == 1
    trained(p, 2.0)
    msg(p, "a", 2.0)
    acts = msg(p, "b", 2.0)
    done = next(a for a in acts if isinstance(a, RoundCompleted))
    assert torch.allclose(done.params, vec(2.0))


def test_early_message_is_kept_for_its_round() -> None:
    p = make()
    p.start(0.0)
    msg(p, "a", 3.0)  # a neighbour already finished training for round 0
    msg(p, "b", 3.0)
    acts = trained(p, 3.0)
    assert "RoundCompleted" in kinds(acts)
    assert msg(p, "a", 9.0, round_=p.round + 5) == []
    assert p.counters.too_early == 1


def test_duplicates_and_strangers() -> None:
    p = make()
    p.start(0.0)
    trained(p, 0.0)
    msg(p, "a", 4.0)
    assert msg(p, "a", 400.0) == []  # equivocation or a retransmit: the first one counts
    assert p.counters.duplicates == 1
    (pen,) = msg(p, "zz", 1.0)
    assert isinstance(pen, PenalisePeer) and pen.peer == "zz"
    done = next(a for a in msg(p, "b", 0.0) if isinstance(a, RoundCompleted))
    assert torch.allclose(done.params, vec(1.0))


def test_peer_down_completes_the_exchange() -> None:
    p = make()
    p.start(0.0)
    trained(p, 2.0)
    msg(p, "a", 2.0)
    acts = p.handle(PeerDown(peer="b"), 1.0)
    assert "RoundCompleted" in kinds(acts)


def test_stale_timer_and_training_are_ignored() -> None:
    p = make()
    p.start(0.0)
    trained(p, 1.0)
    msg(p, "a", 1.0)
    msg(p, "b", 1.0)
    assert p.handle(TimerFired(name="dpsgd/0/0"), 9.0) == []
    assert p.handle(TrainingDone(round=0, params=vec(5)), 9.0) == []


def test_multiple_gossip_steps() -> None:
    p = make(gossip_steps=3)
    p.start(0.0)
    trained(p, 0.0)
    for step in range(3):
        msg(p, "a", 4.0, step=step)
        acts = msg(p, "b", 4.0, step=step)
        if step < 2:
            assert "RoundCompleted" not in kinds(acts)
            assert any(isinstance(a, Send) and a.message.step == step + 1 for a in acts)
    done = next(a for a in acts if isinstance(a, RoundCompleted))
    # x <- 0.5 x + 0.5 * 4, three times from 0: 2, 3, 3.5
    assert torch.allclose(done.params, vec(3.5))


def test_rounds_limit_stops() -> None:
    p = make(rounds=1)
    p.start(0.0)
    trained(p, 0.0)
    msg(p, "a", 0.0)
    acts = msg(p, "b", 0.0)
    assert kinds(acts) == ["CancelTimer", "RoundCompleted"]
    assert p.phase == "done"


def test_resume_joins_the_neighbours_round() -> None:
    p = make()
    p.start(0.0)
    p.resume(1.0)
    assert p.phase == "sync"
    acts = msg(p, "a", 7.0, round_=12)
    assert p.round == 12 and isinstance(acts[0], Train) and acts[0].round == 12


def test_schedule_changes_neighbours_per_round() -> None:
    sched = {0: {"a": 0.5}, 1: {"b": 0.5}}
    p = DPSGD(DPSGDConfig(neighbours=(), schedule=lambda r: sched[r % 2]), vec(0))
    p.start(0.0)
    acts = trained(p, 0.0)
    assert [a.peer for a in acts if isinstance(a, Send)] == ["a"]
    assert isinstance(msg(p, "b", 1.0)[0], PenalisePeer)
    assert "RoundCompleted" in kinds(msg(p, "a", 2.0))
    acts = trained(p, 0.0)
    assert [a.peer for a in acts if isinstance(a, Send)] == ["b"]


@pytest.mark.parametrize(
    "bad",
    [
        {"gossip_steps": 0},
        {"local_steps": -1},
        {"round_timeout": 0},
        {"weights": {"a": 0.7, "b": 0.7}},
        {"weights": {"a": 0.5}},
        {"neighbours": ("a", "a"), "weights": None},
    ],
)
def test_bad_settings_are_rejected(bad) -> None:
    with pytest.raises(ValueError):
        make(**bad)


def test_cancel_timer_named_like_the_set_one() -> None:
    p = make()
    p.start(0.0)
    acts = trained(p, 0.0)
    set_name = next(a for a in acts if isinstance(a, SetTimer)).name
    msg(p, "a", 0.0)
    acts = msg(p, "b", 0.0)
    assert any(isinstance(a, CancelTimer) and a.name == set_name for a in acts)


def test_a_node_far_behind_resynchronises_when_a_majority_of_its_neighbours_is_ahead():
    """A stall used to be permanent: a node more than max_ahead rounds behind dropped every model as
    too early. With a majority of its neighbours ahead it jumps to their (lowest) round."""
    p = DPSGD(DPSGDConfig(neighbours=("a", "b", "c"), max_ahead=2, round_timeout=1.0), torch.zeros(3))
    p.start(0.0)
    assert p.on_message("a", ModelUpdate(round=10, step=0, params=torch.ones(3)), 0.1) == []
    assert p.round == 0  # one neighbour's word is not enough
    out = p.on_message("b", ModelUpdate(round=9, step=0, params=torch.full((3,), 2.0)), 0.2)
    assert p.round == 9 and p.counters.resyncs == 1
    assert [a.round for a in out if isinstance(a, Train)] == [9]
    # b's model of round 9 is already in the round's exchange; a's round-10 model was for a later round
    out = p.on_training_done(TrainingDone(round=9, params=torch.zeros(3)), 0.3)
    assert any(isinstance(a, Send) and a.message.round == 9 for a in out)


def test_a_stranger_far_ahead_cannot_move_a_node():
    p = DPSGD(DPSGDConfig(neighbours=("a", "b"), max_ahead=2), torch.zeros(3))
    p.start(0.0)
    for stranger in ("x", "y", "z"):
        p.on_message(stranger, ModelUpdate(round=50, step=0, params=torch.ones(3)), 0.1)
    assert p.round == 0 and p.counters.resyncs == 0
