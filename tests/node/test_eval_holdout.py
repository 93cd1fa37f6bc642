"""--eval-holdout N: the last N samples of each shard are never trained on, and Evaluate is answered on them,
in both runners (the simulator's SimWorker and a real node's Learner) through one split (holdout_split)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from phalanx.node.datasets import make_blobs
from phalanx.node.learner import Learner, LearnerError, TrainConfig, Trainer, holdout_split
from phalanx.node.partition import partition
from phalanx.sim.config import SimConfig
from phalanx.sim.training import ShardSampler, SimWorker

DATA = make_blobs(n_train=400, n_test=50)


@given(
    size=st.integers(0, 300),
    holdout=st.integers(0, 299),
    batch=st.integers(1, 64),
    seed=st.integers(0, 2**32),
)
@settings(max_examples=60, deadline=None)
def test_held_out_samples_are_never_drawn_by_the_batch_sampler(size, holdout, batch, seed):
    shard = np.random.default_rng(seed).permutation(10_000)[:size]
    if 0 < size <= holdout:
        with pytest.raises(LearnerError, match="nothing to train on"):
            holdout_split(shard, holdout, seed=seed)
        return
    train, held = holdout_split(shard, holdout, seed=seed)
    assert len(held) == (holdout if size else 0) and len(train) == size - len(held)
    assert sorted([*train.tolist(), *held.tolist()]) == sorted(shard.tolist())  # a split of the shard
    assert np.array_equal(train, shard[np.isin(shard, train)])  # the training samples keep the shard's order
    if holdout == 0:
        assert np.array_equal(train, shard)
    again = holdout_split(shard, holdout, seed=seed)
    assert np.array_equal(again[1], held)  # a function of (seed, node)
    sampler = ShardSampler(len(train), batch, seed, shard=train)
    drawn: set[int] = set()
    for step in range(3 * max(1, -(-len(train) // batch))):  # three epochs
        drawn.update(int(i) for i in sampler.indices(step))
    assert drawn == set(train.tolist())  # every training sample, and never a held-out one
    assert drawn.isdisjoint(held.tolist())


def test_held_out_samples_are_a_random_draw_not_the_end_of_a_class_ordered_shard():
    shard = np.arange(1000)  # as shards:K lays a shard out: by class (here: 0-499 one class, 500-999 another)
    _, held = holdout_split(shard, 100, seed=0)
    assert 20 < int((held < 500).sum()) < 80
    assert not np.array_equal(held, holdout_split(shard, 100, seed=0, node=1)[1])


def test_an_empty_shard_stays_empty_and_negative_is_refused():
    train, held = holdout_split(np.empty(0, dtype=np.int64), 10)  # a relay holds no data
    assert len(train) == len(held) == 0
    with pytest.raises(LearnerError):
        holdout_split(np.arange(10), -1)
    with pytest.raises(LearnerError):
        TrainConfig(eval_holdout=-1)


def _worker(holdout: int) -> tuple[SimWorker, Trainer, list[np.ndarray]]:
    trainer = Trainer("logreg", DATA, TrainConfig(eval_holdout=holdout, batch_size=8), init_seed=0)
    shards = partition(DATA.train_y.numpy(), 2, "iid", seed=0)
    return SimWorker(trainer, DATA, shards, seed=0, step_time=0.01), trainer, shards


def _answer_on(
    trainer: Trainer, params: torch.Tensor, idx: np.ndarray
) -> tuple[float, float, tuple[float, ...]]:
    t = torch.from_numpy(idx)
    return trainer.evaluate_per_class(params, DATA.train_x[t], DATA.train_y[t], DATA.num_classes)


def test_sim_evaluate_answers_on_exactly_the_held_out_samples():
    worker, trainer, shards = _worker(30)
    params = trainer.initial + 0.1 * torch.randn(trainer.dim, generator=torch.Generator().manual_seed(1))
    train, held = holdout_split(shards[0], 30, seed=0, node=0)
    for samples, expected in ((0, held), (12, held[:12]), (500, held)):
        acc, loss, per_class, n = worker.evaluate("0", params, samples)
        want = _answer_on(trainer, params, expected)
        assert n == len(expected)
        assert (acc, loss) == pytest.approx(want[:2], abs=1e-6)
        assert [None if math.isnan(p) else p for p in per_class] == [
            None if math.isnan(p) else pytest.approx(p, abs=1e-6) for p in want[2]
        ]
    assert worker.evaluate_many("0", [params], 0)[0][0] == pytest.approx(worker.evaluate("0", params, 0)[0])
    _, _, sampler = worker.data["0"]
    assert np.array_equal(sampler.shard, train) and set(train.tolist()).isdisjoint(held.tolist())


def test_sim_without_holdout_is_unchanged():
    worker, trainer, shards = _worker(0)
    shard = np.asarray(shards[1])
    acc, loss, _, n = worker.evaluate("1", trainer.initial, 40)
    assert n == 40 and (acc, loss) == pytest.approx(_answer_on(trainer, trainer.initial, shard[:40])[:2])
    assert worker.evaluate("1", trainer.initial, 0)[3] == min(200, len(shard))
    _, _, sampler = worker.data["1"]
    assert np.array_equal(sampler.shard, shard)


def test_sim_holdout_larger_than_a_shard_is_one_clear_error():
    with pytest.raises(LearnerError, match=r"--eval-holdout 500 leaves node 0's shard of \d+ samples"):
        _worker(500)


def _learner(holdout: int, shard: np.ndarray) -> Learner:
    return Learner(
        dataset=DATA, shard=shard, model="logreg", config=TrainConfig(eval_holdout=holdout, batch_size=8)
    )


def test_learner_trains_on_the_rest_and_evaluates_on_the_held_out_samples():
    shard = np.arange(100, 160)
    learner = _learner(20, shard)
    train, held = holdout_split(shard, 20, seed=0, node=0)
    assert learner.sampler.size == 40
    drawn = {int(i) for step in range(20) for i in learner.sampler.indices(step)}
    assert drawn == set(range(40))  # positions in learner.x: the held-out rows (40-59) never come
    assert torch.equal(learner.x[:40], DATA.train_x[torch.from_numpy(train)])
    params = learner.get_vector()
    for samples, expected in ((0, held), (5, held[:5]), (99, held)):
        acc, loss, _, n = learner.evaluate_local(params, samples)
        assert n == len(expected)
        assert (acc, loss) == pytest.approx(_answer_on(learner.trainer, params, expected)[:2], abs=1e-6)
    before = learner.get_vector()
    learner.train(5)
    assert not torch.equal(before, learner.get_vector())


def test_learner_without_holdout_is_unchanged_and_too_large_is_refused():
    shard = np.arange(0, 50)
    learner = _learner(0, shard)
    assert learner.sampler.size == 50
    acc, loss, _, n = learner.evaluate_local(learner.get_vector(), 10)
    assert n == 10
    assert (acc, loss) == pytest.approx(_answer_on(learner.trainer, learner.get_vector(), shard[:10])[:2])
    with pytest.raises(LearnerError, match="--eval-holdout 50 leaves node 0's shard of 50 samples"):
        _learner(50, shard)


def test_the_setting_reaches_the_configs_and_the_trainer():
    assert SimConfig().eval_holdout == 0
    config = SimConfig(eval_holdout=25)
    assert TrainConfig.from_settings(config).eval_holdout == 25


def test_net_up_passes_eval_holdout_to_every_node_and_the_run_config():
    from phalanx.cli import build_parser
    from phalanx.net_cmd import node_args, sim_config

    args = build_parser().parse_args(["net", "up", "--eval-holdout", "40"])
    argv = node_args(args)
    assert argv[argv.index("--eval-holdout") + 1] == "40"
    assert sim_config(args).eval_holdout == 40
    node = build_parser().parse_args(["node", "run", *argv])
    assert node.eval_holdout == 40


def test_a_negative_holdout_on_the_command_line_is_one_line_exit_2(capsys):
    from phalanx.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["sim", "--eval-holdout", "-3"])
    assert exc.value.code == 2
    assert "--eval-holdout" in capsys.readouterr().err
