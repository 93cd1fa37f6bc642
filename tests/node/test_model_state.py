"""Full model state: BatchNorm buffers in the vector (or kept local), exact against torch, per simulated
node, through checkpoints; user models and datasets by import path; non-float32 models refused."""

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from phalanx.node import checkpoint as ckpt
from phalanx.node.datasets import DatasetError, load_dataset, make_blobs
from phalanx.node.learner import Learner, LearnerError, TrainConfig, Trainer, parse_buffer_policy
from phalanx.node.models import ModelError, build_model, check_model
from phalanx.sim.training import SimWorker

BLOBS = make_blobs(n_train=400, n_test=100, features=8, classes=4)


def bn_net(input_shape, num_classes):
    """A factory by import path: tests.node.test_model_state:bn_net."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(int(np.prod(input_shape)), 16),
        nn.BatchNorm1d(16),
        nn.ReLU(),
        nn.Linear(16, num_classes),
    )


class Net(nn.Module):
    def __init__(self, *, classes: int, seed: int = 0, width: int = 8):
        super().__init__()
        self.seed = seed
        self.body = nn.Sequential(nn.LazyLinear(width), nn.ReLU(), nn.Linear(width, classes))

    def forward(self, x):
        return self.body(x)


def half_net():
    return nn.Linear(8, 4).half()


def not_a_module():
    return 42


def blob_tensors():
    """A dataset by import path: tests.node.test_model_state:blob_tensors."""
    return BLOBS.train_x, BLOBS.train_y, BLOBS.test_x, BLOBS.test_y


SPEC = "tests.node.test_model_state:bn_net"


def _bn_modules(trainer):
    return [m for m in trainer.module.modules() if isinstance(m, nn.BatchNorm1d)]


def test_batchnorm_buffers_travel_in_the_vector_bit_exactly():
    learner = Learner(dataset=BLOBS, shard=np.arange(400), model=SPEC)
    t = learner.trainer
    assert t.num_params == 8 * 16 + 16 + 2 * 16 + 16 * 4 + 4
    assert t.dim == t.num_params + 16 + 16 + 1  # running mean, running var, num_batches_tracked
    assert t.buffer_names["average"] == ["2.running_mean", "2.running_var", "2.num_batches_tracked"]
    v = torch.randn(t.dim)
    v[-1] = 7.0
    learner.set_vector(v)
    assert torch.equal(learner.get_vector().view(torch.int32), v.view(torch.int32))
    t.load(v)
    bn = _bn_modules(t)[0]
    assert torch.equal(bn.running_mean, v[t.num_params : t.num_params + 16])
    assert bn.num_batches_tracked.dtype == torch.int64 and int(bn.num_batches_tracked) == 7
    # Training moves the running statistics, and the vector carries them out.
    before = learner.get_vector()
    learner.train(3)
    after = learner.get_vector()
    assert not torch.equal(before[t.num_params : t.num_params + 32], after[t.num_params : t.num_params + 32])
    assert after[-1].item() == 10.0  # the counter (7 set above, 3 steps), as float32


def test_steps_equal_torch_sgd_including_running_statistics():
    cfg = TrainConfig(lr=0.05, momentum=0.9, weight_decay=1e-3)
    trainer = Trainer(SPEC, BLOBS, cfg)
    reference = copy.deepcopy(trainer.module)
    for p in reference.parameters():
        p.data = p.data.clone()
        p.grad = None
    for name, b in reference.named_buffers():
        reference.get_buffer(name).data = b.data.clone()
    opt = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    state = trainer.new_state()
    for i in range(4):
        x, y = BLOBS.train_x[i * 32 : (i + 1) * 32], BLOBS.train_y[i * 32 : (i + 1) * 32]
        trainer.step(state, x, y)
        opt.zero_grad()
        nn.functional.cross_entropy(reference(x), y).backward()
        opt.step()
    expected = torch.cat(
        [p.detach().reshape(-1) for p in reference.parameters()]
        + [b.detach().reshape(-1).float() for b in reference.buffers()]
    )
    torch.testing.assert_close(state.params, expected, rtol=1e-6, atol=1e-7)
    assert state.params[-1].item() == 4.0


def test_local_policy_keeps_buffers_out_of_the_vector_and_per_node():
    cfg = TrainConfig(buffers="local")
    learner = Learner(dataset=BLOBS, shard=np.arange(400), model=SPEC, config=cfg)
    t = learner.trainer
    assert t.dim == t.num_params and t.local_dim == 33
    learner.train(2)
    assert learner.state.buffers[-1].item() == 2.0
    mixed = Trainer(SPEC, BLOBS, TrainConfig(buffers="float=average,int=local"))
    assert mixed.dim == mixed.num_params + 32 and mixed.local_dim == 1


@pytest.mark.parametrize("policy", ["average", "local"])
def test_simulated_nodes_keep_their_own_buffers(policy):
    cfg = TrainConfig(buffers=policy, momentum=0.0)
    shards = [np.arange(0, 200), np.arange(200, 400)]

    def worker():
        return SimWorker(Trainer(SPEC, BLOBS, cfg), BLOBS, shards, seed=0, step_time=1.0)

    def stats(w, node, params):
        return torch.cat([params[w.trainer.num_params :], w.buffers_of(node)])

    interleaved = worker()
    p0, _ = interleaved.train("0", 0, interleaved.trainer.initial, 3)
    p1, _ = interleaved.train("1", 0, interleaved.trainer.initial, 3)
    p0, _ = interleaved.train("0", 1, p0, 3)
    alone = worker()
    q0, _ = alone.train("0", 0, alone.trainer.initial, 3)
    q0, _ = alone.train("0", 1, q0, 3)
    assert torch.equal(p0, q0)
    assert torch.equal(stats(interleaved, "0", p0), stats(alone, "0", q0))
    assert not torch.equal(stats(interleaved, "0", p0), stats(interleaved, "1", p1))
    # Evaluation of node 0's model uses node 0's statistics, whoever trained last.
    interleaved.train("1", 1, p1, 1)
    assert interleaved.evaluate("0", p0, 100) == alone.evaluate("0", q0, 100)


@pytest.mark.parametrize("policy", ["average", "local"])
def test_checkpoint_round_trip_keeps_the_running_statistics(policy):
    cfg = TrainConfig(buffers=policy)
    learner = Learner(dataset=BLOBS, shard=np.arange(400), model=SPEC, config=cfg)
    learner.train(5)
    data = ckpt.to_bytes(
        ckpt.Checkpoint(
            round=1,
            params=learner.state.params,
            momentum=learner.state.momentum,
            steps=learner.state.steps,
            extra=learner.local_buffers(),
        )
    )
    saved = ckpt.from_bytes(data, dim=learner.dim)
    fresh = Learner(dataset=BLOBS, shard=np.arange(400), model=SPEC, config=cfg, seed=9)
    fresh.state.params.copy_(saved.params)
    fresh.restore_local_buffers(saved.extra)
    assert fresh.evaluate() == learner.evaluate()
    with pytest.raises(LearnerError, match="no local buffers") if policy == "local" else _nothing():
        fresh.restore_local_buffers({})


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_sam_updates_running_statistics_once_per_step():
    plain = Trainer(SPEC, BLOBS, TrainConfig())
    sam = Trainer(SPEC, BLOBS, TrainConfig(sam_rho=0.05))
    a, b = plain.new_state(), sam.new_state()
    x, y = BLOBS.train_x[:32], BLOBS.train_y[:32]
    plain.step(a, x, y)
    sam.step(b, x, y)
    n = plain.num_params
    assert torch.equal(a.params[n:], b.params[n:])  # the first pass's statistics, counter 1
    assert not torch.equal(a.params[:n], b.params[:n])


def test_non_float32_models_are_refused_clearly():
    with pytest.raises(
        LearnerError, match=r"parameter weight is torch.float16; phalanx trains float32 models"
    ):
        Trainer("tests.node.test_model_state:half_net", BLOBS, TrainConfig())
    with pytest.raises(LearnerError, match="buffer policy must be"):
        TrainConfig(buffers="sometimes")
    assert parse_buffer_policy("int=local") == {"float": "average", "int": "local"}


def test_factories_get_the_keywords_they_declare():
    model = build_model("tests.node.test_model_state:Net", (8,), 4, seed=3)
    assert isinstance(model, Net) and model.seed == 3 and model.body[2].out_features == 4
    assert (
        Trainer("tests.node.test_model_state:Net", BLOBS, TrainConfig()).dim == 8 * 8 + 8 + 8 * 4 + 4
    )  # lazy
    trainer = Trainer(lambda **kw: bn_net(kw["input_shape"], kw["num_classes"]), BLOBS, TrainConfig())
    assert trainer.dim > trainer.num_params


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("nopkg_phalanx.models:net", "nopkg_phalanx.models:net: no module named 'nopkg_phalanx'"),
        ("tests.node.test_model_state:nothing", "test_model_state has no attribute 'nothing'"),
        ("tests.node.test_model_state:not_a_module", "not_a_module: returned a int, not an nn.Module"),
        ("tests.node.test_model_state:SPEC", "is a str, not a model factory"),
        ("resnet", "unknown model 'resnet'"),
    ],
)
def test_bad_model_specs_are_one_line(spec, needle):
    with pytest.raises(ModelError) as err:
        check_model(spec)
        build_model(spec, (8,), 4)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_dataset_by_import_path():
    ds = load_dataset("tests.node.test_model_state:blob_tensors")
    assert torch.equal(ds.train_x, BLOBS.train_x) and ds.num_classes == 4
    normed = load_dataset("tests.node.test_model_state:blob_tensors:norm=train")
    torch.testing.assert_close(normed.train_x.mean(0), torch.zeros(8), atol=1e-5, rtol=0)
    with pytest.raises(DatasetError, match="no attribute 'nope'"):
        load_dataset("tests.node.test_model_state:nope")
    with pytest.raises(DatasetError, match="returned int; expected a phalanx Dataset"):
        load_dataset("tests.node.test_model_state:not_a_module")


async def test_real_runtimes_send_average_and_checkpoint_batchnorm_statistics(tmp_path):
    import io

    import trio

    from phalanx.gossip.dpsgd import DPSGD, DPSGDConfig
    from phalanx.gossip.wire import Limits
    from phalanx.node.bans import BanList
    from phalanx.node.metrics import Metrics
    from phalanx.node.partition import shard_of
    from phalanx.node.runtime import NodeRuntime, RuntimeSettings
    from phalanx.node.transport import MemoryNetwork

    n, rounds = 3, 4
    learners = [
        Learner(
            dataset=BLOBS, shard=shard_of(BLOBS.train_y.numpy(), n, i, "iid", seed=0), model=SPEC, index=i
        )
        for i in range(n)
    ]
    limits = Limits(dim=learners[0].dim)
    net = MemoryNetwork(limits=limits)
    names = [f"n{i}" for i in range(n)]
    async with net.run(), trio.open_nursery() as nursery:
        for i in range(n):
            protocol = DPSGD(
                DPSGDConfig(neighbours=(names[i - 1], names[(i + 1) % n]), rounds=rounds, round_timeout=5),
                learners[i].get_vector(),
            )
            runtime = NodeRuntime(
                protocol=protocol,
                transport=net.transport(names[i]),
                learner=learners[i],
                limits=limits,
                metrics=Metrics(),
                bans=BanList(),
                log=io.StringIO(),
                settings=RuntimeSettings(
                    rounds=rounds, linger=0.2, checkpoint_path=tmp_path / names[i] / "c.bin"
                ),
            )
            nursery.start_soon(runtime.run)
    p = learners[0].trainer.num_params
    initial = learners[0].trainer.initial
    for i in range(n):
        saved = ckpt.load(tmp_path / names[i] / "c.bin", dim=learners[i].dim)
        assert saved is not None and saved.round == rounds
        # The running statistics moved, and the counter is every node's (equal) count, averaged.
        assert not torch.equal(saved.params[p:-1], initial[p:-1])
        assert saved.params[-1].item() == rounds


def torch_datasets():
    """A pair of torch Datasets by import path: tests.node.test_model_state:torch_datasets."""
    from torch.utils.data import TensorDataset

    return TensorDataset(BLOBS.train_x, BLOBS.train_y), TensorDataset(BLOBS.test_x, BLOBS.test_y)


def test_dataset_from_a_pair_of_torch_datasets():
    ds = load_dataset("tests.node.test_model_state:torch_datasets")
    assert torch.equal(ds.test_x, BLOBS.test_x) and torch.equal(ds.train_y, BLOBS.train_y)


@given(
    policy=st.sampled_from(["average", "local", "float=average,int=local", "float=local,int=average"]),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=20, deadline=None)
def test_module_state_round_trips_through_vector_and_local_buffers(policy, seed):
    trainer = Trainer(SPEC, BLOBS, TrainConfig(buffers=policy))
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(trainer.dim, generator=gen)
    local = torch.randn(trainer.local_dim, generator=gen)
    counter = torch.randint(0, 2**20, (1,), generator=gen).float()
    (v if "num_batches_tracked" in " ".join(trainer.buffer_names["average"]) else local)[-1:] = counter
    trainer.load(v, local)
    bn = _bn_modules(trainer)[0]
    assert int(bn.num_batches_tracked) == int(counter)
    # What the module holds, read back through the same layout, is the input bit for bit.
    state = trainer.new_state()
    trainer._save_casts()
    state.params.copy_(trainer.flat)
    state.buffers.copy_(trainer.local)
    assert torch.equal(state.params.view(torch.int32), v.view(torch.int32))
    assert torch.equal(state.buffers.view(torch.int32), local.view(torch.int32))
    module_state = {k: t for k, t in trainer.module.state_dict().items() if "running" in k}
    placed = torch.cat([v[trainer.num_params :], local])
    for t in module_state.values():
        assert any(torch.equal(t, placed[i : i + 16]) for i in range(0, len(placed) - 15))


def broken():
    return 1 / 0


def test_failures_inside_user_code_are_one_line_naming_the_spec():
    with pytest.raises(
        DatasetError, match=r"test_model_state:broken: failed: ZeroDivisionError: division by zero"
    ):
        load_dataset("tests.node.test_model_state:broken")
    with pytest.raises(ModelError, match=r"broken: building the model failed: ZeroDivisionError"):
        build_model("tests.node.test_model_state:broken", (8,), 4)
