"""Optimiser and loss choices: SGD, Adam and AdamW equal torch.optim's on the same batches, SAM wraps any of
them, optimiser state is per simulated node and survives a real node's checkpoint, losses by import path."""

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from phalanx.cli import main
from phalanx.node import checkpoint as ckpt
from phalanx.node.datasets import make_blobs
from phalanx.node.learner import BatchSampler, Learner, LearnerError, TrainConfig, Trainer, build_loss
from phalanx.sim.training import SimWorker

BLOBS = make_blobs(n_train=400, n_test=100, features=8, classes=4)


def _torch_optimizer(name, params, cfg):
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    kind = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    return kind(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@settings(max_examples=12)
@given(
    name=st.sampled_from(["sgd", "adam", "adamw"]),
    lr=st.sampled_from([0.001, 0.01, 0.1]),
    weight_decay=st.sampled_from([0.0, 0.01]),
    steps=st.integers(1, 6),
)
def test_each_optimizer_equals_torch_optim_on_the_same_batches(name, lr, weight_decay, steps):
    cfg = TrainConfig(optimizer=name, lr=lr, weight_decay=weight_decay, batch_size=16)
    trainer = Trainer("mlp", BLOBS, cfg)
    reference = copy.deepcopy(trainer.module)  # the same initial weights, as ordinary parameters
    for p in reference.parameters():
        p.data = p.data.clone()
    opt = _torch_optimizer(name, reference.parameters(), cfg)
    state = trainer.new_state()
    sampler = BatchSampler(len(BLOBS.train_y), cfg.batch_size, seed=3)
    for step in range(steps):
        idx = torch.from_numpy(sampler.indices(step))
        x, y = BLOBS.train_x[idx], BLOBS.train_y[idx]
        trainer.step(state, x, y)
        opt.zero_grad()
        nn.functional.cross_entropy(reference(x), y).backward()
        opt.step()
    expected = torch.cat([p.detach().reshape(-1) for p in reference.parameters()])
    torch.testing.assert_close(state.params, expected, rtol=1e-5, atol=1e-6)


def test_sam_wraps_adam_and_changes_its_steps():
    def run(rho):
        learner = Learner(dataset=BLOBS, shard=np.arange(400), config=TrainConfig(optimizer="adam", lr=0.01, sam_rho=rho))
        learner.train(5)
        return learner.get_vector()

    assert not torch.equal(run(0.0), run(0.05))


def test_adam_moments_are_kept_per_simulated_node():
    cfg = TrainConfig(optimizer="adam", lr=0.01)
    shards = [np.arange(0, 200), np.arange(200, 400)]

    def worker():
        return SimWorker(Trainer("mlp", BLOBS, cfg), BLOBS, shards, seed=0, step_time=0.01)

    interleaved, alone = worker(), worker()
    p0 = p1 = q0 = interleaved.trainer.initial
    for r in range(3):
        p0, _ = interleaved.train("0", r, p0, 2)
        p1, _ = interleaved.train("1", r, p1, 2)
        q0, _ = alone.train("0", r, q0, 2)
    assert torch.equal(p0, q0)  # node 1's steps in between leave node 0's moments alone
    assert interleaved.state("0").second.abs().sum() > 0
    assert not torch.equal(interleaved.state("0").second, interleaved.state("1").second)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adam_state_survives_a_checkpoint(optimizer):
    cfg = TrainConfig(optimizer=optimizer, lr=0.01, weight_decay=0.01)

    def learner():
        return Learner(dataset=BLOBS, shard=np.arange(400), config=cfg)

    first = learner()
    first.train(4)
    saved = ckpt.from_bytes(
        ckpt.to_bytes(
            ckpt.Checkpoint(
                round=1,
                params=first.state.params,
                momentum=first.state.momentum,
                steps=first.state.steps,
                extra=first.optimizer_extra(),
            )
        ),
        dim=first.dim,
    )
    resumed, forgetful = learner(), learner()
    for other in (resumed, forgetful):
        other.state.params.copy_(saved.params)
        other.state.momentum.copy_(saved.momentum)
        other.state.steps = saved.steps
    resumed.restore_optimizer_extra(saved.extra)
    for each in (first, resumed, forgetful):
        each.train(3)
    assert torch.equal(resumed.get_vector(), first.get_vector())
    assert not torch.equal(forgetful.get_vector(), first.get_vector())  # the second moment matters
    with pytest.raises(LearnerError, match="Adam state"):
        resumed.restore_optimizer_extra({"adam_second": b"\0" * 8})


def test_a_loss_by_import_path_trains_with_that_loss():
    def run(loss_fn):
        learner = Learner(dataset=BLOBS, shard=np.arange(400), config=TrainConfig(loss_fn=loss_fn))
        learner.train(5)
        return learner

    margin, default = run("torch.nn:MultiMarginLoss"), run("cross-entropy")
    assert not torch.equal(margin.get_vector(), default.get_vector())
    # evaluation reports the training loss
    x, y = BLOBS.test_x, BLOBS.test_y
    with torch.no_grad():
        expected = float(nn.MultiMarginLoss()(margin.trainer.module(x), y))
    assert margin.evaluate()[1] == pytest.approx(expected, rel=1e-5)
    assert build_loss(nn.functional.cross_entropy) is nn.functional.cross_entropy  # a callable as it is
    assert isinstance(build_loss("torch.nn:MultiMarginLoss"), nn.MultiMarginLoss)  # a class, instantiated


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--loss-fn", "nopkg_phalanx:loss"], "no module named 'nopkg_phalanx'"),
        (["--loss-fn", "hinge"], "unknown loss 'hinge'"),
        (["--optimizer", "rmsprop"], "unknown optimizer 'rmsprop'"),
    ],
)
def test_bad_optimizer_or_loss_is_one_line_and_exit_2(args, needle, capsys, tmp_path):
    assert main(["sim", "--dataset", "blobs", *args, "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_train_takes_the_optimizer_and_the_loss(capsys):
    args = ["train", "--dataset", "blobs", "--optimizer", "adamw", "--loss-fn", "torch.nn:MultiMarginLoss"]
    assert main([*args, "--lr", "0.01", "--steps", "30", "--eval-every", "30", "--no-progress"]) == 0
    accuracy = float(capsys.readouterr().out.split("final: test accuracy ")[1].split()[0])
    assert accuracy > 0.5  # ten blobs: chance is 0.1


def test_net_up_passes_the_optimizer_loss_and_device_to_every_node():
    from phalanx.cli import build_parser
    from phalanx.net_cmd import node_args, sim_config

    args = build_parser().parse_args(
        ["net", "up", "--optimizer", "adam", "--loss-fn", "torch.nn:MultiMarginLoss", "--device", "auto"]
    )
    argv = node_args(args)
    for flag, value in (("--optimizer", "adam"), ("--loss-fn", "torch.nn:MultiMarginLoss"), ("--device", "auto")):
        assert argv[argv.index(flag) + 1] == value
    config = sim_config(args)  # the run folder's config.toml
    assert (config.optimizer, config.loss_fn, config.device) == ("adam", "torch.nn:MultiMarginLoss", "auto")
