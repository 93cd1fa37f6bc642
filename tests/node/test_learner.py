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


@pytest.mark.parametrize("model", ["logreg", "mlp", "cnn", "cnn-dropout"])
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


def test_cnn_dropout_is_the_mnist_example_network(mnist):
    trainer = Trainer("cnn-dropout", mnist, TrainConfig())
    assert trainer.dim == 1_199_882  # conv 320 + conv 18,496 + fc 1,179,776 + fc 1,290
    with pytest.raises(ModelError, match="cnn-dropout needs image inputs"):
        build_model("cnn-dropout", (784,), 10)


def test_dropout_masks_come_from_the_models_own_generator(mnist):
    # Same seed, same training, even when something else draws from torch's global RNG in between;
    # evaluation runs without dropout, so it is a function of the vector alone.
    x, y = mnist.train_x[:64], mnist.train_y[:64]
    results = []
    for noise in (False, True):
        trainer = Trainer("cnn-dropout", mnist, TrainConfig(), init_seed=3)
        state = trainer.new_state()
        for i in range(2):
            if noise:
                torch.rand(1000)
            trainer.step(state, x[i * 32 : (i + 1) * 32], y[i * 32 : (i + 1) * 32])
        results.append(state.params)
        assert trainer.evaluate(state.params, x, y) == trainer.evaluate(state.params, x, y)
    assert torch.equal(results[0], results[1])
    other = Trainer("cnn-dropout", mnist, TrainConfig(), init_seed=4)
    assert not torch.equal(other.initial, Trainer("cnn-dropout", mnist, TrainConfig(), init_seed=3).initial)


def test_seeded_dropout_drops_values_or_whole_channels_and_rescales():
    from phalanx.node.models import SeededDropout

    x = torch.ones(64, 16, 5, 5)
    element = SeededDropout(0.5, torch.Generator().manual_seed(0))
    out = element(x)
    assert set(out.unique().tolist()) == {0.0, 2.0}  # kept values scaled by 1 / (1 - p)
    assert 0.45 < float((out == 0).float().mean()) < 0.55
    channel = SeededDropout(0.25, torch.Generator().manual_seed(0), channels=True)
    out = channel(x)
    per_map = out.reshape(64, 16, 25)
    # every feature map is either all dropped or all kept (and scaled by 4/3)
    assert torch.all((per_map == 0).all(dim=2) | (per_map == per_map[:, :, :1]).all(dim=2))
    assert 0.18 < float((per_map[:, :, 0] == 0).float().mean()) < 0.32
    assert torch.allclose(per_map[per_map != 0], torch.tensor(4 / 3))
    channel.eval()
    assert torch.equal(channel(x), x)
    with pytest.raises(ModelError, match="dropout probability"):
        SeededDropout(1.0, torch.Generator())
