"""The Byzantine wrapper: what an attacker sends instead of its honest model, and when."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from phalanx.gossip.byzantine import Byzantine, HonestView
from phalanx.gossip.dpsgd import DPSGD, DPSGDConfig
from phalanx.gossip.events import MessageReceived, Send, SetTimer, TimerFired, TrainingDone
from phalanx.gossip.messages import ModelUpdate

D = 6


def vec(value: float) -> torch.Tensor:
    return torch.full((D,), float(value))


def attacker(behaviour: str, attack: str = "", **kw) -> Byzantine:
    inner = DPSGD(DPSGDConfig(neighbours=("a", "b", "c"), round_timeout=5.0), vec(0))
    return Byzantine(inner, behaviour=behaviour, attack=attack, delay=0.1, rng=np.random.default_rng(0), **kw)


def sends_after_release(p: Byzantine, honest: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    p.start(0.0)
    for peer, value in (honest or {}).items():
        p.handle(MessageReceived(peer=peer, message=ModelUpdate(round=0, params=vec(value))), 0.05)
    acts = p.handle(TrainingDone(round=0, params=vec(1.0)), 0.0)
    assert not any(isinstance(a, Send) for a in acts), "a rushing attacker holds its messages"
    (timer,) = [a for a in acts if isinstance(a, SetTimer) and a.name.startswith("byzantine/")]
    out = p.handle(TimerFired(name=timer.name), timer.deadline)
    return {a.peer: a.message.params for a in out if isinstance(a, Send)}


def test_silent_sends_nothing_but_keeps_its_rounds() -> None:
    p = attacker("silent")
    p.start(0.0)
    acts = p.handle(TrainingDone(round=0, params=vec(1.0)), 0.0)
    assert not any(isinstance(a, Send) for a in acts)
    assert any(isinstance(a, SetTimer) and a.name.startswith("dpsgd/") for a in acts)


def test_label_flip_sends_its_honest_model() -> None:
    p = attacker("label-flip")
    p.start(0.0)
    acts = p.handle(TrainingDone(round=0, params=vec(1.0)), 0.0)
    assert sorted(a.peer for a in acts if isinstance(a, Send)) == ["a", "b", "c"]


def test_equivocation_sends_a_different_vector_to_each_neighbour() -> None:
    sent = sends_after_release(attacker("equivocation"))
    assert set(sent) == {"a", "b", "c"}
    assert not torch.equal(sent["a"], sent["b"]) and not torch.equal(sent["b"], sent["c"])


def test_attack_without_help_uses_what_it_received() -> None:
    sent = sends_after_release(
        attacker("attack", "ipm", attack_params={"epsilon": 2.0}), {"a": 3.0, "b": 5.0}
    )
    # honest rows it knows for target a: a's own vector (3) and the other honest one it saw (5)
    assert torch.allclose(sent["a"], vec(-2.0 * 4.0))
    # c sent nothing: the attacker's own honest vector (1) stands in for c's, next to a's and b's
    assert torch.allclose(sent["c"], vec(-2.0 * 3.0))


def test_omniscient_attack_uses_the_targets_view() -> None:
    def oracle(target, round_, step):
        return HonestView(
            own=vec(10.0),
            neighbours=torch.stack([vec(20.0), vec(30.0)]),
            weights=torch.tensor([0.25, 0.25]),
            byzantine_weight=0.25,
        )

    sent = sends_after_release(attacker("attack", "ipm", attack_params={"epsilon": 1.0}, omniscient=oracle))
    assert all(torch.allclose(v, vec(-20.0)) for v in sent.values())


def test_dissensus_cancels_plain_gossip() -> None:
    own, nbrs, w, bw = vec(1.0), torch.stack([vec(3.0), vec(5.0)]), torch.tensor([0.25, 0.25]), 0.25

    def oracle(target, round_, step):
        return HonestView(own=own, neighbours=nbrs, weights=w, byzantine_weight=bw)

    sent = sends_after_release(
        attacker("dissensus", "dissensus", attack_params={"epsilon": 1.0}, omniscient=oracle)
    )
    mixed = own * (1 - 0.75) + 0.25 * nbrs[0] + 0.25 * nbrs[1] + bw * sent["a"]
    assert torch.allclose(mixed, own)  # epsilon = 1: the target does not move at all


def test_colluders_get_nothing() -> None:
    sent = sends_after_release(attacker("equivocation", colluders=frozenset({"b"})))
    assert set(sent) == {"a", "c"}


def test_alie_defaults_f_from_the_view() -> None:
    def oracle(target, round_, step):
        return HonestView(
            own=vec(0.0),
            neighbours=torch.stack([vec(1.0), vec(2.0), vec(3.0)]),
            weights=torch.full((3,), 0.2),
            byzantine_weight=0.2,
            byzantine=1,
        )

    sent = sends_after_release(attacker("attack", "alie", omniscient=oracle))
    honest = torch.stack([vec(0.0), vec(1.0), vec(2.0), vec(3.0)])
    assert torch.all(sent["a"] > honest.mean(0))  # mu + z sigma with z > 0


def test_unknown_behaviour() -> None:
    with pytest.raises(ValueError, match="unknown Byzantine behaviour"):
        attacker("chaos")
