"""A protocol that asks its runner to evaluate a model on the node's own data: the smallest user of Evaluate."""

from __future__ import annotations

import torch

from phalanx.gossip.events import Action, Evaluate, EvaluationDone, RoundCompleted, TrainingDone
from phalanx.gossip.protocol import Protocol


class Judge(Protocol):
    def __init__(self, params: torch.Tensor, samples: int = 50) -> None:
        self.params = params
        self.samples = samples
        self.answers: list[EvaluationDone] = []

    def start(self, now: float) -> list[Action]:
        return [Evaluate(tag="initial", round=0, params=self.params, samples=self.samples)]

    def on_evaluation_done(self, event: EvaluationDone, now: float) -> list[Action]:
        self.answers.append(event)
        return [RoundCompleted(round=0, params=self.params)]

    def on_message(self, peer, message, now):  # type: ignore[no-untyped-def]
        return []

    def on_timer(self, name, now):  # type: ignore[no-untyped-def]
        return []

    def on_training_done(self, event: TrainingDone, now: float) -> list[Action]:
        return []
