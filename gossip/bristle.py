"""Bristle (Verbraeken, de Vos & Pouwelse, 2021): a distance prioritiser and a per-class performance integrator.

Bristle trains and exchanges only the output layer of a network whose other layers are frozen (transfer
learning), and replaces D-PSGD's averaging by two steps at every node, every round:

1. **Prioritiser** (cheap, distance only): the models received this round are sorted by their Euclidean
   distance to the node's own freshly trained model. The ``k - e`` closest are kept (*exploit*), plus ``e``
   drawn at random among the others (*explore*, ``e = round(k * explore)``), so a node keeps meeting models
   that differ from its own (other classes, in a non-i.i.d. network) while far-away ones rarely cost it an
   evaluation.
2. **Integrator** (costly, performance): the own model and each candidate are evaluated on a small set of the
   node's own samples (the runner's :class:`~phalanx.gossip.events.Evaluate`), giving a per-class accuracy
   (recall) for each. For every *familiar* class (one the node holds samples of) and every candidate, the
   candidate's recall is compared with the own one: better scores ``gap ** (3 + own)``, worse scores
   ``-(gap ** (4 + own)) * (1 + penalty)``, with ``gap = diff_scale * |difference|`` and ``penalty`` growing
   with the candidates already seen to be worse on that class (a sequence of attackers on one class is
   punished harder). A score maps to a weight ``max(0, ceiling * sigmoid(score / scale) - floor)``, times the
   candidate's *certainty* ``max(0, mean - std)`` of its familiar-class recalls (``peer_classes``: only its best
   N familiar classes judge it). Row ``c`` of the output layer (its weights and its bias ``c``) is then the
   weighted average of the own row ``c`` (weight 1) and the candidates' rows ``c`` with their class-``c``
   weights. *Foreign* classes (no local sample to judge by) take one weight per candidate, the same mapping of
   the sum of its (unbounded) class scores.

A candidate worse than the own model by more than :func:`rejection_gap` on a class gets no weight for that
class, whatever its distance. The round structure (train, send to the graph's neighbours, wait for all of them
or the round timeout, admission of messages, resynchronisation) is D-PSGD's: :class:`Bristle` is a
:class:`~phalanx.gossip.dpsgd.DPSGD` whose combine step is the two steps above, asynchronous because the
evaluations are the runner's work. The choices the paper leaves open are listed in ``docs/bristle.md``.

**What is merged per class.** Per-class merging is meaningful only when every node's output layer sits on the
same frozen features (head-only training, ``--train-only head``): the vector is then that layer, its weight
matrix ``(classes, inputs)`` row-major and its ``classes`` biases (``nn.Linear``'s order), and what was
evaluated is exactly what is merged. On a full-model vector a candidate's class rows mean nothing on top of
another node's hidden layers (a sign-flipped MLP scores well on several classes, but its output rows do not
fit honest features), so there every coordinate takes one weight per candidate (``merge = whole``): the mean
of its class weights over the classes it is judged on. (Not the foreign-class weight: one class far below
the own model, which noise in a small evaluation set produces often, drives that sum of scores to zero, and
a full-model Bristle then trains alone; measured 0.89 against 0.96 with the mean.)
``merge = auto`` picks ``per-class`` when the run trains the head only, ``whole`` otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from phalanx.gossip.dpsgd import DPSGD, DPSGDConfig
from phalanx.gossip.events import (
    Action,
    CancelTimer,
    Evaluate,
    EvaluationDone,
    PeerId,
    RoundCompleted,
)
from phalanx.gossip.spec import NodeContext, ProtocolSpec, RunSettings, WorldDefaults

Tensor = torch.Tensor


MERGES = ("auto", "per-class", "whole")


def _help(text: str, **bounds: float) -> dict[str, object]:
    return {"help": text, **bounds}


@dataclass(frozen=True, slots=True, kw_only=True)
class BristleParams:
    """Bristle's ``protocol_params`` (the integrator's constants default to the authors' implementation)."""

    k: int = field(default=10, metadata=_help("models integrated per round (closest plus explored)", min=1))
    explore: float = field(
        default=0.2, metadata=_help("fraction of k drawn at random beyond the closest", min=0, max=1)
    )
    eval_samples: int = field(
        default=0,
        metadata=_help(
            "local samples each candidate is evaluated on (0: the runner's default); held out from training "
            "only with the training setting --eval-holdout N (then at most N; docs/bristle.md)",
            min=0,
        ),
    )
    merge: str = field(
        default="auto",
        metadata={
            "help": "per-class (the vector is the output layer), whole (one weight per candidate) or auto "
            "(per-class when only the head is trained)",
            "choices": MERGES,
        },
    )
    diff_scale: float = field(default=10.0, metadata=_help("recall differences are multiplied by this", gt=0))
    score_scale: float = field(
        default=100.0, metadata=_help("scores are divided by this before the sigmoid", gt=0)
    )
    weight_ceiling: float = field(default=10.0, metadata=_help("weight = ceiling * sigmoid - floor", gt=0))
    weight_floor: float = field(
        default=4.0, metadata=_help("weight = ceiling * sigmoid - floor (>= 0)", min=0)
    )
    sequence_penalty: float = field(
        default=2.0, metadata=_help("extra penalty per earlier candidate that was worse on a class", min=0)
    )
    certainty_std: float = field(
        default=1.0, metadata=_help("certainty = mean - certainty_std * std of a candidate's recalls", min=0)
    )
    peer_classes: int = field(
        default=0,
        metadata=_help(
            "judge each candidate on its best N familiar classes only (the paper's per-peer class count; "
            "0: on all of them)",
            min=0,
        ),
    )
    min_recall: float = field(
        default=0.0, metadata=_help("a class recall below this never gets weight", min=0, max=1)
    )

    def __post_init__(self) -> None:
        from phalanx.gossip.fields import check_bounds

        check_bounds(self, error=ValueError)

    @property
    def explored(self) -> int:
        return min(self.k, round(self.k * self.explore))


# ---------------------------------------------------------------- prioritiser


def prioritise(
    own: Tensor, received: Mapping[PeerId, Tensor], params: BristleParams, rng: np.random.Generator
) -> tuple[list[PeerId], list[PeerId]]:
    """The candidates to evaluate: ``(exploit, explore)``, exploit ordered by distance to ``own`` (ties by
    peer id), explore drawn uniformly among the rest."""
    if not received:
        return [], []
    peers = sorted(received)
    rows = torch.stack([received[p] for p in peers])
    dist = torch.linalg.vector_norm(rows - own, dim=1).tolist()
    order = sorted(range(len(peers)), key=lambda i: (dist[i], peers[i]))
    keep = params.k - params.explored
    exploit = [peers[i] for i in order[:keep]]
    rest = [peers[i] for i in order[keep:]]
    n = min(params.explored, len(rest))
    explore = [rest[int(i)] for i in sorted(rng.choice(len(rest), size=n, replace=False))] if n else []
    return exploit, explore


# ---------------------------------------------------------------- integrator


@dataclass(frozen=True, slots=True)
class HeadLayout:
    """Where the output layer's rows sit in a vector of ``dim`` values (see the module docstring)."""

    dim: int
    classes: int
    inputs: int

    @classmethod
    def of(cls, dim: int, classes: int) -> HeadLayout | None:
        """The layout of a vector that is one output layer, or None when ``dim`` cannot be one."""
        if classes < 1 or dim % classes or dim // classes < 2:
            return None
        return cls(dim=dim, classes=classes, inputs=dim // classes - 1)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def weight_of(score: float, certainty: float, params: BristleParams) -> float:
    """A score -> a non-negative weight (before certainty: at most ``ceiling - floor``)."""
    s = max(-700.0 * params.score_scale, min(700.0 * params.score_scale, score))
    w = params.weight_ceiling * _sigmoid(s / params.score_scale) - params.weight_floor
    return max(0.0, w) * certainty


def rejection_gap(own: float, params: BristleParams) -> float:
    """How far below the own recall ``own`` a candidate's class recall may fall before that class gets no
    weight (with no sequence penalty; a penalty only lowers it). ``inf``: never rejected by the score."""
    ratio = params.weight_floor / params.weight_ceiling
    if ratio <= 0:
        return math.inf
    if ratio >= 1:
        return 0.0
    # weight 0 <=> ceiling * sigmoid(score / scale) <= floor <=> score <= scale * logit(ratio) (< 0 here when
    # ratio < 1/2); a worse candidate's score is -(diff_scale * gap) ** (4 + own), capped at -scale.
    bound = -params.score_scale * math.log(ratio / (1 - ratio))
    if bound <= 0:
        return 0.0
    if bound >= params.score_scale:
        return math.inf  # the cap keeps every score above the bound
    return float(bound ** (1.0 / (4.0 + own)) / params.diff_scale)


def certainty_of(recalls: Sequence[float], params: BristleParams) -> float:
    if not recalls:
        return 0.0
    mean = sum(recalls) / len(recalls)
    std = math.sqrt(sum((r - mean) ** 2 for r in recalls) / len(recalls))
    return max(0.0, mean - params.certainty_std * std)


def _weight(score: np.ndarray, certainty: np.ndarray, params: BristleParams) -> np.ndarray:
    """:func:`weight_of` on arrays (``certainty`` broadcast along the last axis)."""
    x = np.clip(score / params.score_scale, -700.0, 700.0)
    sigmoid = 0.5 * (1.0 + np.tanh(0.5 * x))
    return np.maximum(0.0, params.weight_ceiling * sigmoid - params.weight_floor) * certainty


def weights(
    own_recall: Sequence[float], recalls: Sequence[Sequence[float]], params: BristleParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The integrator's weights for candidates with per-class ``recalls`` (in prioritiser order), computed on
    arrays: ``(by_class, foreign, whole)``, i.e. each candidate's weight per class (k, classes) (NaN for a
    foreign class, 0 for a familiar class it is not judged on), its foreign-class weight (k,), and its
    whole-vector weight (k,), the mean of its class weights over the classes it is judged on."""
    mine = np.asarray(own_recall, dtype=np.float64)
    classes, k = len(mine), len(recalls)
    familiar = ~np.isnan(mine)
    theirs = np.asarray(recalls, dtype=np.float64).reshape(k, classes)
    theirs = np.where(np.isnan(theirs), 0.0, theirs)
    judged = np.repeat(familiar[None, :], k, axis=0)
    n_familiar = int(familiar.sum())
    if 0 < params.peer_classes < n_familiar:  # its best familiar classes (ties: the lower class first)
        key = np.where(familiar, -theirs, np.inf)
        best = np.argsort(key, axis=1, kind="stable")[:, : params.peer_classes]
        judged = np.zeros((k, classes), dtype=bool)
        np.put_along_axis(judged, best, True, axis=1)
    count = judged.sum(axis=1)
    safe = np.maximum(count, 1)
    mean = (theirs * judged).sum(axis=1) / safe
    std = np.sqrt((((theirs - mean[:, None]) ** 2) * judged).sum(axis=1) / safe)
    certainty = np.where(count > 0, np.maximum(0.0, mean - params.certainty_std * std), 0.0)
    own = np.where(familiar, mine, 0.0)
    short = np.maximum(0.0, own - theirs) * judged  # how far below the own recall, where judged
    penalty = params.sequence_penalty * (
        np.cumsum(short, axis=0) - short
    )  # the earlier candidates' shortfalls
    gap = np.abs(theirs - own) * params.diff_scale
    score = np.where(
        theirs > own,
        gap ** (3.0 + own),
        np.where(theirs < own, -(gap ** (4.0 + own)) * (1.0 + penalty), 0.0),
    )
    score = np.where(judged, score, 0.0)
    per = _weight(np.maximum(-params.score_scale, score), certainty[:, None], params)
    per = np.where(judged & (theirs >= params.min_recall), per, 0.0)
    by_class = np.where(familiar, per, np.nan)
    foreign = _weight(score.sum(axis=1), certainty, params)
    whole = np.where(count > 0, np.where(judged, per, 0.0).sum(axis=1) / safe, 0.0)
    return by_class, foreign, whole


@dataclass(frozen=True, slots=True)
class Integration:
    """The integrator's outcome: the new vector and every weight it used (for tests and counters)."""

    params: Tensor
    #: per candidate: its weight for each familiar class (NaN for a foreign class)
    class_weights: dict[PeerId, tuple[float, ...]]
    #: per candidate: its weight for the foreign classes (per-class merge) or the whole vector (whole merge)
    peer_weights: dict[PeerId, float]


def integrate(
    own: Tensor,
    own_recall: Sequence[float],
    candidates: Sequence[tuple[PeerId, Tensor, Sequence[float]]],
    params: BristleParams,
    *,
    per_class: bool = True,
) -> Integration:
    """Merge ``candidates`` (``(peer, vector, per-class recall)``, in prioritiser order) into ``own``: class by
    class when ``per_class`` (the vector is one output layer), else one weight per candidate for the whole
    vector (see the module docstring). ``own_recall[c]`` is NaN for a class the node holds no sample of."""
    classes = len(own_recall)
    layout = HeadLayout.of(own.numel(), classes) if per_class else None
    by_class, foreign, whole = weights(own_recall, [r for _, _, r in candidates], params)
    class_weights = {peer: tuple(by_class[i].tolist()) for i, (peer, _, _) in enumerate(candidates)}
    chosen = foreign if layout is not None else whole
    peer_weights = {peer: float(chosen[i]) for i, (peer, _, _) in enumerate(candidates)}
    rows = np.where(np.isnan(by_class), foreign[:, None], by_class) if len(candidates) else by_class
    used = [
        i for i in range(len(candidates)) if (bool(rows[i].any()) if layout is not None else whole[i] > 0)
    ]
    if not used:
        return Integration(params=own.clone(), class_weights=class_weights, peer_weights=peer_weights)
    stack = torch.stack([candidates[i][1] for i in used])
    if layout is None:  # one weight per candidate for the whole vector
        w = torch.tensor([peer_weights[candidates[i][0]] for i in used], dtype=torch.float32)
        merged = (own + w @ stack) / (1.0 + float(w.sum()))
        return Integration(params=merged, class_weights=class_weights, peer_weights=peer_weights)
    coef = torch.from_numpy(rows[used].astype(np.float32))  # (k, classes)
    # each class weight spread over its row's weights and its bias: one coefficient per coordinate
    full = torch.cat((coef.repeat_interleave(layout.inputs, dim=1), coef), dim=1)  # (k, dim)
    merged = (own + (full * stack).sum(dim=0)) / (1.0 + full.sum(dim=0))
    return Integration(params=merged, class_weights=class_weights, peer_weights=peer_weights)


# ---------------------------------------------------------------- the protocol


@dataclass(frozen=True, slots=True, kw_only=True)
class BristleConfig:
    dpsgd: DPSGDConfig
    params: BristleParams
    per_class: bool = True  # merge resolved: the vector is one output layer


@dataclass(slots=True)
class _Pending:
    """One round's integration in progress: the own model, the candidates, the answers so far."""

    round: int
    batch: int  # which integration of this node: its tags carry it, so a late answer never fills a newer one
    received: int
    explored: int
    vectors: list[tuple[PeerId, Tensor]]  # index 0: the node itself ("")
    recalls: dict[int, tuple[float, ...]] = field(default_factory=dict)


class Bristle(DPSGD):
    """One node's Bristle (see the module docstring): D-PSGD rounds with the prioritiser and integrator."""

    def __init__(
        self,
        config: BristleConfig,
        params: Tensor,
        *,
        rng: np.random.Generator,
        start_round: int = 0,
    ) -> None:
        super().__init__(config.dpsgd, params, start_round=start_round)
        self.bristle = config.params
        self.per_class = config.per_class
        self.rng = rng
        self._pending: _Pending | None = None
        self._batches = 0
        self.tally = {
            "candidates": 0,
            "explored": 0,
            "evaluations": 0,
            "stale_evaluations": 0,
            "classes_accepted": 0,
            "classes_rejected": 0,
            "peers_accepted": 0,
            "dropped_nonfinite": 0,
            "not_a_head": 0,
        }

    def _finish_exchange(self, now: float, *, timed_out: bool) -> list[Action]:
        got = self._inbox.pop((self.round, self.step), {})
        actions: list[Action] = [] if timed_out else [CancelTimer(name=self.timer_name)]
        if timed_out:
            self.counters.timeouts += 1
        finite = {p: v for p, v in got.items() if bool(torch.isfinite(v).all())}
        self.tally["dropped_nonfinite"] += len(got) - len(finite)
        exploit, explore = prioritise(self.params, finite, self.bristle, self.rng)
        chosen = exploit + explore
        if not chosen:
            return actions + self._end_round(self.params, received=len(got), accepted=0)
        self.tally["candidates"] += len(chosen)
        self.tally["explored"] += len(explore)
        vectors = [("", self.params), *((p, finite[p]) for p in chosen)]
        self._batches += 1
        batch = self._batches
        self._pending = _Pending(
            round=self.round, batch=batch, received=len(got), explored=len(explore), vectors=vectors
        )
        self.phase = "integrate"
        samples = self.bristle.eval_samples
        actions.extend(
            Evaluate(tag=f"bristle/{batch}/{i}", round=self.round, params=v, samples=samples)
            for i, (_, v) in enumerate(vectors)
        )
        return actions

    def on_evaluation_done(self, event: EvaluationDone, now: float) -> list[Action]:
        pending = self._pending
        index = self._index(event.tag, pending.batch if pending is not None else -1)
        if self.phase != "integrate" or pending is None or event.round != pending.round or index is None:
            self.tally["stale_evaluations"] += 1
            return []
        if index >= len(pending.vectors) or index in pending.recalls:
            self.tally["stale_evaluations"] += 1
            return []
        pending.recalls[index] = tuple(event.per_class)
        self.tally["evaluations"] += 1
        if len(pending.recalls) < len(pending.vectors):
            return []
        self._pending = None
        own_recall = pending.recalls[0]
        candidates = [
            (peer, vector, pending.recalls[i]) for i, (peer, vector) in enumerate(pending.vectors) if i > 0
        ]
        if any(len(r) != len(own_recall) for _, _, r in candidates):
            self.tally["stale_evaluations"] += (
                1  # a runner answering with varying classes: keep the own model
            )
            return self._end_round(self.params, received=pending.received, accepted=0)
        result = integrate(self.params, own_recall, candidates, self.bristle, per_class=self.per_class)
        if self.per_class and HeadLayout.of(self.params.numel(), len(own_recall)) is None:
            self.tally["not_a_head"] += 1  # per-class merge asked for a vector that cannot be one layer
        accepted = 0
        for peer, weights in result.class_weights.items():
            used = [w for w in weights if not math.isnan(w)]
            self.tally["classes_accepted"] += sum(w > 0 for w in used)
            self.tally["classes_rejected"] += sum(w <= 0 for w in used)
            took = result.peer_weights[peer] > 0 or (self.per_class and any(w > 0 for w in used))
            accepted += took
        self.tally["peers_accepted"] += accepted
        return self._end_round(result.params, received=pending.received, accepted=accepted)

    @staticmethod
    def _index(tag: str, batch: int) -> int | None:
        """The candidate index of a tag ``bristle/BATCH/INDEX`` of integration ``batch``, else None."""
        parts = tag.split("/")
        if len(parts) != 3 or parts[0] != "bristle" or parts[1] != str(batch) or not parts[2].isdigit():
            return None
        return int(parts[2])

    def _end_round(self, params: Tensor, *, received: int, accepted: int) -> list[Action]:
        self.params = params
        self.counters.mixed += accepted
        actions: list[Action] = [
            RoundCompleted(round=self.round, params=params, received=received, accepted=accepted)
        ]
        self.round += 1
        for old in [k for k in self._inbox if k[0] < self.round]:
            del self._inbox[old]
        actions.extend(self._begin_training())
        return actions

    def resume(self, now: float) -> list[Action]:
        self._pending = None
        return super().resume(now)

    def stats(self) -> dict[str, float]:
        base = super().stats()
        base.pop("rule_failures", None)  # Bristle applies no aggregation rule
        return {**base, **self.tally}


# ---------------------------------------------------------------- registry entry


def _configure(settings: RunSettings, params: BristleParams, world: WorldDefaults) -> BristleConfig:
    if settings.gossip_steps != 1:
        raise ValueError(f"runs one exchange per round; gossip_steps must be 1, got {settings.gossip_steps}")
    dpsgd = DPSGDConfig(
        neighbours=(),
        local_steps=settings.local_steps,
        round_timeout=settings.round_timeout,
        rounds=settings.rounds,
    )
    merge = params.merge
    if merge == "auto":  # the transfer-learning setting, where the run has one (docs/bristle.md)
        merge = "per-class" if getattr(settings, "train_only", "") == "head" else "whole"
    return BristleConfig(dpsgd=dpsgd, params=params, per_class=merge == "per-class")


def _build(ctx: NodeContext, config: BristleConfig) -> Bristle:
    dpsgd = replace(config.dpsgd, neighbours=ctx.neighbours, schedule=ctx.schedule)
    return Bristle(replace(config, dpsgd=dpsgd), ctx.params, rng=ctx.rng, start_round=ctx.start_round)


SPEC = ProtocolSpec(
    name="bristle",
    summary="Bristle: distance prioritiser (explore/exploit) and per-class performance integrator on local samples",
    params=BristleParams,
    configure=_configure,
    build=_build,
    rule_inputs=lambda config, degree: None,
    report="every-node",
    resumable=True,
)
