"""Bristle: the prioritiser, the per-class integrator, the protocol's round, and a simulated attack it resists."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from phalanx.aggregation import attack
from phalanx.gossip import registry
from phalanx.gossip.bristle import (
    Bristle,
    BristleParams,
    HeadLayout,
    certainty_of,
    integrate,
    prioritise,
    rejection_gap,
    weight_of,
    weights,
)
from phalanx.gossip.events import (
    Evaluate,
    EvaluationDone,
    MessageReceived,
    RoundCompleted,
    Send,
    SetTimer,
    TimerFired,
    Train,
    TrainingDone,
)
from phalanx.gossip.messages import ModelUpdate
from phalanx.gossip.spec import NodeContext
from phalanx.sim.config import ConfigError, SimConfig
from phalanx.sim.experiment import plan, run

recall = st.floats(0.0, 1.0, allow_nan=False)


def vectors(seed: int, n: int, d: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(d, generator=g) for _ in range(n)]


# ---------------------------------------------------------------- prioritiser


@settings(max_examples=60)
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(0, 14),
    k=st.integers(1, 12),
    explore=st.floats(0.0, 1.0),
)
def test_prioritiser_keeps_the_closest_and_explores_within_bounds(seed, n, k, explore):
    own = torch.zeros(6)
    received = {f"p{i:02d}": v for i, v in enumerate(vectors(seed, n, 6))}
    params = BristleParams(k=k, explore=explore)
    exploit, explored = prioritise(own, received, params, np.random.default_rng(seed))
    keep = k - params.explored
    dist = {p: float(v.norm()) for p, v in received.items()}
    assert len(exploit) == min(n, keep)
    assert len(explored) == min(params.explored, max(0, n - keep))
    assert not set(exploit) & set(explored) and set(exploit) | set(explored) <= set(received)
    # exploit is exactly the closest ones, closest first; nobody explored is closer than an exploited one
    assert [dist[p] for p in exploit] == sorted(dist.values())[: len(exploit)]
    if exploit and explored:
        assert min(dist[p] for p in explored) >= max(dist[p] for p in exploit)


@settings(max_examples=40)
@given(seed=st.integers(0, 2**16), n=st.integers(2, 12), k=st.integers(1, 10))
def test_a_far_byzantine_update_is_never_exploited_while_closer_ones_fill_the_slots(seed, n, k):
    received = {f"h{i}": v * 0.1 for i, v in enumerate(vectors(seed, n, 8))}
    received["byz"] = torch.full((8,), 100.0)
    params = BristleParams(k=k, explore=0.0 if seed % 2 else 0.3)
    exploit, _ = prioritise(torch.zeros(8), received, params, np.random.default_rng(seed))
    if n >= k - params.explored:
        assert "byz" not in exploit


# ---------------------------------------------------------------- integrator


def head(classes: int, inputs: int, seed: int) -> torch.Tensor:
    return vectors(seed, 1, classes * (inputs + 1))[0]


@settings(max_examples=80)
@given(
    own=st.lists(recall, min_size=3, max_size=3),
    theirs=st.lists(st.lists(recall, min_size=3, max_size=3), min_size=1, max_size=4),
)
def test_a_class_far_below_the_own_recall_never_gets_weight(own, theirs):
    params = BristleParams()
    cands = [(f"p{i}", head(3, 4, i + 1), r) for i, r in enumerate(theirs)]
    result = integrate(head(3, 4, 0), own, cands, params)
    for peer, r in zip(result.class_weights, theirs, strict=True):
        for c in range(3):
            w = result.class_weights[peer][c]
            assert w >= 0
            if r[c] < own[c] - rejection_gap(own[c], params):
                assert w == 0, (own, r, c)


@settings(max_examples=40)
@given(own=st.lists(recall, min_size=4, max_size=4), n=st.integers(1, 5), seed=st.integers(0, 100))
def test_identical_honest_updates_leave_the_model_as_it_is(own, n, seed):
    x = head(4, 3, seed)
    result = integrate(x, own, [(f"p{i}", x.clone(), list(own)) for i in range(n)], BristleParams())
    torch.testing.assert_close(result.params, x)


def test_rows_are_merged_per_class():
    layout = HeadLayout.of(3 * 5, 3)
    assert layout is not None and layout.inputs == 4
    own, other = torch.zeros(15), torch.ones(15)
    # better on class 0, equal on class 1, far worse on class 2
    result = integrate(own, [0.5, 0.9, 0.9], [("p", other, [0.9, 0.9, 0.1])], BristleParams())
    w = result.class_weights["p"]
    assert w[0] > w[1] > 0 and w[2] == 0
    rows = result.params[:12].view(3, 4)
    bias = result.params[12:]
    assert bool((rows[0] > rows[1]).all()) and bias[0] > bias[1] > 0  # a better class pulls harder
    assert bool((rows[2] == 0).all()) and bias[2] == 0  # a rejected class leaves the own row untouched
    # the whole-vector merge uses one weight everywhere
    whole = integrate(own, [0.5, 0.9, 0.9], [("p", other, [0.9, 0.9, 0.1])], BristleParams(), per_class=False)
    assert torch.unique(whole.params).numel() == 1
    weight = whole.peer_weights["p"]  # the mean of its class weights
    assert abs(weight - sum(whole.class_weights["p"]) / 3) < 1e-9
    assert abs(float(whole.params[0]) - weight / (1 + weight)) < 1e-6


def test_a_peer_with_other_classes_is_judged_on_its_best_ones():
    own, other = torch.zeros(20), torch.ones(20)
    mine, theirs = [0.9, 0.9, 0.1, 0.1], [0.0, 0.0, 0.95, 0.95]  # it holds classes 2 and 3, the node 0 and 1
    everything = integrate(own, mine, [("p", other, theirs)], BristleParams())
    assert everything.class_weights["p"] == (0.0,) * 4  # judged on all four: no certainty, no weight
    best = integrate(own, mine, [("p", other, theirs)], BristleParams(peer_classes=2))
    assert best.class_weights["p"][:2] == (0.0, 0.0) and min(best.class_weights["p"][2:]) > 1
    assert bool((best.params[8:16] > 0.5).all()) and bool((best.params[:8] == 0).all())


def test_foreign_classes_take_the_candidates_overall_weight():
    own, other = torch.zeros(15), torch.ones(15)
    result = integrate(own, [0.8, 0.8, math.nan], [("p", other, [0.8, 0.8, math.nan])], BristleParams())
    weight = result.peer_weights["p"]
    assert weight > 0 and math.isnan(result.class_weights["p"][2])
    expected = weight / (1 + weight)
    assert abs(float(result.params[8]) - expected) < 1e-6 and abs(float(result.params[14]) - expected) < 1e-6


def test_class_poison_changes_one_row_and_keeps_its_norm():
    honest = torch.stack(vectors(3, 4, 3 * 5))
    out = attack("class-poison", honest, classes=3, target=1)
    mean = honest.mean(0)
    changed = (out != mean).nonzero().flatten().tolist()
    assert set(changed) <= {4, 5, 6, 7, 13}
    torch.testing.assert_close(out.norm(), mean.norm())


# ---------------------------------------------------------------- the protocol's round (sans-I/O)


def node(neighbours=("a", "b", "c"), **params) -> Bristle:
    spec = registry.get("bristle")
    config = spec.config(SimConfig(protocol="bristle", protocol_params={"merge": "per-class", **params}))
    ctx = NodeContext(node="me", params=torch.zeros(15), neighbours=neighbours, rng=np.random.default_rng(0))
    built = spec.build_node(ctx, config)
    assert isinstance(built, Bristle)
    return built


def answer(action: Evaluate, per_class) -> EvaluationDone:
    return EvaluationDone(
        tag=action.tag, round=action.round, accuracy=0.0, loss=0.0, per_class=tuple(per_class), samples=9
    )


def test_a_round_evaluates_the_candidates_then_integrates():
    b = node(k=2, explore=0.5)
    (train,) = b.start(0.0)
    assert isinstance(train, Train)
    actions = b.handle(TrainingDone(round=0, params=torch.zeros(15)), 1.0)
    assert {a.peer for a in actions if isinstance(a, Send)} == {"a", "b", "c"}
    evals: list[Evaluate] = []
    for peer, value in (("a", 1.0), ("b", 2.0), ("c", 50.0)):
        update = ModelUpdate(round=0, params=torch.full((15,), value))
        evals += [
            a for a in b.handle(MessageReceived(peer=peer, message=update), 1.5) if isinstance(a, Evaluate)
        ]
    assert len(evals) == 3  # own + k = 2 candidates: the closest (a) and one explored
    assert float(evals[1].params[0]) == 1.0
    assert b.handle(answer(evals[0], [1.0, 1.0, 1.0]), 2.0) == []
    stale = EvaluationDone(tag="bristle/7/1", round=0, accuracy=0, loss=0, per_class=(0.0,) * 3, samples=1)
    assert b.handle(stale, 2.0) == [] and b.stats()["stale_evaluations"] == 1
    assert b.handle(answer(evals[1], [1.0, 1.0, 1.0]), 2.0) == []
    out = b.handle(answer(evals[2], [0.0, 0.0, 0.0]), 2.0)  # the explored one is useless: rejected
    done = next(a for a in out if isinstance(a, RoundCompleted))
    assert done.round == 0 and done.received == 3 and done.accepted == 1
    assert any(isinstance(a, Train) and a.round == 1 for a in out)
    stats = b.stats()
    assert stats["candidates"] == 2 and stats["explored"] == 1 and stats["evaluations"] == 3


def test_a_round_with_nothing_received_keeps_the_own_model():
    b = node()
    b.start(0.0)
    b.handle(TrainingDone(round=0, params=torch.ones(15)), 1.0)
    out = b.on_timer(b.timer_name, 20.0)
    done = next(a for a in out if isinstance(a, RoundCompleted))
    assert done.accepted == 0 and bool((done.params == 1).all())


def test_registry_entry_and_its_refusals():
    assert "bristle" in registry.names()
    with pytest.raises(ConfigError, match="bristle applies no aggregation rule"):
        plan(SimConfig(nodes=4, dataset="blobs", topology="ring", protocol="bristle", rule="median"))
    with pytest.raises(ConfigError, match="bristle: runs one exchange per round; gossip_steps must be 1"):
        plan(SimConfig(nodes=4, dataset="blobs", topology="ring", protocol="bristle", gossip_steps=2))
    with pytest.raises(ConfigError, match="bristle: unknown merge 'rows'"):
        plan(SimConfig(nodes=4, dataset="blobs", protocol="bristle", protocol_params={"merge": "rows"}))


def test_merge_auto_is_per_class_exactly_when_only_the_head_trains():
    spec = registry.get("bristle")
    assert spec.config(SimConfig(protocol="bristle", train_only="head")).per_class
    assert not spec.config(SimConfig(protocol="bristle")).per_class
    forced = SimConfig(protocol="bristle", protocol_params={"merge": "per-class"})
    assert spec.config(forced).per_class


# ---------------------------------------------------------------- simulated


def test_bristle_learns_where_an_attack_breaks_mean_aggregation():
    def acc(protocol: str) -> float:
        config = SimConfig(
            nodes=8,
            rounds=8,
            model="logreg",  # one linear layer: the vector is the output layer, merged per class
            topology="regular:4",
            protocol=protocol,
            protocol_params={"merge": "per-class"} if protocol == "bristle" else {},
            eval_every=7,
            byzantine_nodes=(1, 5),
            attack="large-value",
            attack_params={"value": 1e6},
            local_steps=3,
            eval_samples=500,
            lr=0.01,
        )
        return float(run(plan(config)).rows[-1]["acc_mean"])

    assert acc("bristle") > 0.8 and acc("dpsgd") < 0.4


# ---------------------------------------------------------------- random event sequences


class BristleMachine(RuleBasedStateMachine):
    """A model trained in round r is the constant 10r, a neighbour's round-r model 10r + 0.5. The integrator
    is a convex combination (own weight 1, others >= 0), so a round-r result lies in [10r, 10r + 0.5]: a model
    of another round, or an answer for the wrong candidate, shows up outside that band."""

    def __init__(self) -> None:
        super().__init__()
        self.b = node(k=2, explore=0.5)
        self.now = 0.0
        self.train: int | None = None
        self.timer: str | None = None
        self.evals: list[Evaluate] = []
        self.completed: list[int] = []
        self.do(self.b.start(self.now))

    def do(self, actions) -> None:
        for a in actions:
            if isinstance(a, Train):
                self.train = a.round
            elif isinstance(a, SetTimer):
                self.timer = a.name
            elif isinstance(a, Evaluate):
                assert a.tag not in {
                    e.tag for e in self.evals
                }  # a late answer can never fill a newer request
                self.evals.append(a)
            elif isinstance(a, RoundCompleted):
                r = a.round
                assert not self.completed or r > self.completed[-1]
                assert bool(((a.params >= 10 * r - 1e-4) & (a.params <= 10 * r + 0.5 + 1e-4)).all()), a.params
                assert a.accepted <= a.received
                self.completed.append(r)

    @precondition(lambda self: self.train is not None)
    @rule()
    def trained(self) -> None:
        r, self.train = self.train, None
        self.now += 1
        self.do(self.b.handle(TrainingDone(round=r, params=torch.full((15,), 10.0 * r)), self.now))

    @rule(peer=st.sampled_from(("a", "b", "c")), ahead=st.sampled_from((-1, 0, 0, 1, 4)))
    def receive(self, peer: str, ahead: int) -> None:
        r = max(0, self.b.round + ahead)
        message = ModelUpdate(round=r, params=torch.full((15,), 10.0 * r + 0.5))
        self.do(self.b.handle(MessageReceived(peer=peer, message=message), self.now))

    @precondition(lambda self: self.timer is not None)
    @rule()
    def timeout(self) -> None:
        self.now += 5
        self.do(self.b.handle(TimerFired(name=self.timer), self.now))

    @precondition(lambda self: bool(self.evals))
    @rule(data=st.data(), recalls=st.lists(recall, min_size=3, max_size=3))
    def answer(self, data, recalls) -> None:
        action = self.evals.pop(data.draw(st.integers(0, len(self.evals) - 1)))
        self.do(self.b.handle(answer(action, recalls), self.now))

    @rule()
    def resume(self) -> None:
        self.do(self.b.resume(self.now))

    @invariant()
    def counters_are_sane(self) -> None:
        stats = self.b.stats()
        assert all(v >= 0 for v in stats.values())
        assert stats["explored"] <= stats["candidates"]


TestBristleMachine = BristleMachine.TestCase
TestBristleMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


# ---------------------------------------------------------------- the array integrator against a plain loop


def reference_weights(own_recall, recalls, params: BristleParams):
    """The integrator's weights written as loops over candidates and classes (docs/bristle.md, step 3)."""
    classes = len(own_recall)
    familiar = [c for c in range(classes) if not math.isnan(own_recall[c])]
    penalty = [0.0] * classes
    by_class, foreign, whole = [], [], []
    for recall in recalls:
        theirs = [0.0 if math.isnan(r) else r for r in recall]
        judged = familiar
        if 0 < params.peer_classes < len(familiar):
            judged = sorted(sorted(familiar, key=lambda c: -theirs[c])[: params.peer_classes])
        certainty = certainty_of([theirs[c] for c in judged], params)
        row = [0.0 if c in familiar else math.nan for c in range(classes)]
        total = 0.0
        for c in judged:
            mine = own_recall[c]
            gap = abs(theirs[c] - mine) * params.diff_scale
            if theirs[c] > mine:
                score = gap ** (3.0 + mine)
            elif theirs[c] < mine:
                score = -(gap ** (4.0 + mine)) * (1.0 + penalty[c])
            else:
                score = 0.0
            total += score
            if theirs[c] >= params.min_recall:
                row[c] = weight_of(max(-params.score_scale, score), certainty, params)
        for c in judged:
            penalty[c] += params.sequence_penalty * max(0.0, own_recall[c] - theirs[c])
        by_class.append(row)
        foreign.append(weight_of(total, certainty, params))
        whole.append(sum(row[c] for c in judged) / len(judged) if judged else 0.0)
    return by_class, foreign, whole


maybe_nan = st.one_of(recall, st.just(math.nan))


@settings(max_examples=150)
@given(
    own=st.lists(maybe_nan, min_size=4, max_size=4),
    theirs=st.lists(st.lists(maybe_nan, min_size=4, max_size=4), min_size=0, max_size=5),
    peer_classes=st.integers(0, 5),
    min_recall=st.sampled_from((0.0, 0.3)),
)
def test_the_array_integrator_equals_the_loop(own, theirs, peer_classes, min_recall):
    params = BristleParams(peer_classes=peer_classes, min_recall=min_recall)
    by_class, foreign, whole = weights(own, theirs, params)
    ref_class, ref_foreign, ref_whole = reference_weights(own, theirs, params)
    np.testing.assert_allclose(
        by_class.reshape(len(theirs), 4), np.array(ref_class).reshape(len(theirs), 4), rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(foreign, ref_foreign, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(whole, ref_whole, rtol=1e-9, atol=1e-12)
