"""The learner: exact flat-vector round trip, SGD equal to torch's, determinism, SAM, MNIST accuracy."""

import copy

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from phalanx.node.datasets import load_dataset
from phalanx.node.learner import BatchSampler, Learner, LearnerError, TrainConfig, Trainer, flip_labels
from phalanx.node.models import ModelError, build_model


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist")


@pytest.mark.parametrize("model", ["logreg", "mlp", "cnn"])
def test_vector_round_trip_is_bit_exact(mnist, model):
    learner = Learner(dataset=mnist, shard=np.arange(100), model=model)
    v = torch.randn(learner.dim)
    learner.set_vector(v)
    out = learner.get_vector()
    assert out.dtype == torch.float32 and out.shape == (learner.dim,)
    assert torch.equal(out.view(torch.int32), v.view(torch.int32))
    # The module itself sees the vector (its parameters are views into the flat buffer).
    learner.trainer.flat.copy_(v)
    assert torch.equal(torch.cat([p.detach().reshape(-1) for p in learner.trainer.module.parameters()]), v)


def test_mlp_has_784_64_10_shape(mnist):
    assert Learner(dataset=mnist, shard=np.arange(10), model="mlp").dim == 784 * 64 + 64 + 64 * 10 + 10


def test_set_vector_rejects_wrong_shape_and_dtype(mnist):
    learner = Learner(dataset=mnist, shard=np.arange(10), model="logreg")
    with pytest.raises(LearnerError, match="float32 of shape"):
        learner.set_vector(torch.zeros(learner.dim + 1))
    with pytest.raises(LearnerError, match="float32 of shape"):
        learner.set_vector(torch.zeros(learner.dim, dtype=torch.float64))


def test_sgd_step_equals_torch_sgd(mnist):
    cfg = TrainConfig(lr=0.05, momentum=0.9, weight_decay=1e-3)
    trainer = Trainer("mlp", mnist, cfg)
    reference = copy.deepcopy(trainer.module)
    for p in reference.parameters():
        p.data = p.data.clone()
        p.grad = None
    opt = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    state = trainer.new_state()
    for i in range(4):
        x, y = mnist.train_x[i * 32 : (i + 1) * 32], mnist.train_y[i * 32 : (i + 1) * 32]
        trainer.step(state, x, y)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(reference(x), y).backward()
        opt.step()
    expected = torch.cat([p.detach().reshape(-1) for p in reference.parameters()])
    torch.testing.assert_close(state.params, expected, rtol=1e-6, atol=1e-7)


def test_same_seed_same_result_different_seed_different(mnist):
    def run(seed):
        learner = Learner(dataset=mnist, shard=np.arange(2000), model="mlp", seed=seed)
        learner.train(40)
        return learner.get_vector(), learner.evaluate()

    (a, ea), (b, eb), (c, _) = run(1), run(1), run(2)
    assert torch.equal(a, b) and ea == eb
    assert not torch.equal(a, c)


def test_sam_changes_the_step_and_still_learns():
    blobs = load_dataset("blobs")
    plain = Learner(dataset=blobs, shard=np.arange(2000), model="mlp", config=TrainConfig(lr=0.05))
    sam = Learner(
        dataset=blobs, shard=np.arange(2000), model="mlp", config=TrainConfig(lr=0.05, sam_rho=0.05)
    )
    before, _ = sam.evaluate()
    plain.train(100)
    sam.train(100)
    assert not torch.equal(plain.get_vector(), sam.get_vector())
    assert sam.evaluate()[0] > max(0.8, before)


@given(size=st.integers(1, 200), batch=st.integers(1, 64), seed=st.integers(0, 100))
def test_sampler_visits_every_sample_once_per_epoch(size, batch, seed):
    sampler = BatchSampler(size, batch, seed)
    per_epoch = -(-size // batch)
    seen = np.concatenate([sampler.indices(s) for s in range(per_epoch)])
    assert np.array_equal(np.sort(seen), np.arange(size))
    # A fresh sampler (e.g. after a restart) gives the same batch for the same step.
    assert np.array_equal(
        BatchSampler(size, batch, seed).indices(per_epoch + 1), sampler.indices(per_epoch + 1)
    )


def test_label_flipping():
    y = torch.tensor([0, 1, 9, 4])
    assert flip_labels(y, 10).tolist() == [9, 8, 0, 5]
    blobs = load_dataset("blobs")
    learner = Learner(dataset=blobs, shard=np.arange(100), model="logreg", flipped=True)
    assert torch.equal(learner.y, 9 - blobs.train_y[:100])


def test_bad_settings():
    with pytest.raises(LearnerError, match="learning rate"):
        TrainConfig(lr=0)
    with pytest.raises(LearnerError, match="momentum"):
        TrainConfig(momentum=1.0)
    with pytest.raises(ModelError, match="unknown model 'resnet'"):
        build_model("resnet", (1, 28, 28), 10)
    with pytest.raises(ModelError, match="cnn needs image inputs"):
        build_model("cnn", (32,), 10)


def test_mlp_reaches_90_percent_on_embedded_mnist(mnist):
    learner = Learner(
        dataset=mnist, shard=np.arange(8000), model="mlp", config=TrainConfig(lr=0.05, momentum=0.9)
    )
    learner.train(3 * 250)  # three epochs of 8,000 samples at batch 32
    accuracy, loss = learner.evaluate()
    assert accuracy >= 0.90, accuracy
    assert loss < 0.5
