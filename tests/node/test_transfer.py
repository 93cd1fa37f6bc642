"""Transfer learning: the head/frozen split, head-only vectors, the feature cache, the weights file and the
disjointness of pretraining and node data (phalanx.node.transfer)."""

import hashlib
import json
import struct
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from phalanx.node.datasets import load_dataset, make_blobs
from phalanx.node.learner import Learner, TrainConfig, Trainer
from phalanx.node.models import build_model
from phalanx.node.partition import partition
from phalanx.node.transfer import (
    MAGIC,
    TransferError,
    check_features,
    frozen_state,
    head_name,
    indices_sha256,
    labels_fingerprint,
    partition_for,
    read_weights,
    source_indices,
    write_weights,
)
from phalanx.sim.training import SimWorker

BLOBS = make_blobs(n_train=600, n_test=200)


def head_config(features: str = "", **kw) -> TrainConfig:
    return TrainConfig(train_only="head", features=features, **kw)


def test_builtin_heads_are_the_final_linear_layer():
    assert head_name(build_model("logreg", (32,), 10), "logreg") == "1"
    assert head_name(build_model("mlp", (32,), 10), "mlp") == "3"
    assert head_name(build_model("cnn", (1, 28, 28), 10), "cnn") == "11"
    assert head_name(build_model("cnn-dropout", (1, 28, 28), 10), "cnn-dropout") == "9"


class WithHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(32, 16), nn.ReLU())
        self.head = nn.Linear(16, 10)
        # registered after the head: "the last module with parameters" would pick it
        self.extra = nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class NoHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(32, 16)
        self.b = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def test_user_model_head_is_its_head_attribute_else_its_last_module_with_parameters():
    assert head_name(WithHead(), "m:WithHead") == "head"
    assert head_name(NoHead(), "m:NoHead") == "b"


def test_head_only_vector_holds_only_the_head():
    full = Trainer("mlp", BLOBS, TrainConfig())
    head = Trainer("mlp", BLOBS, head_config())
    assert full.dim == 32 * 64 + 64 + 64 * 10 + 10
    assert head.dim == 64 * 10 + 10
    assert head.transfer is not None and head.transfer.cached and head.transfer.feature_shape == (64,)


def test_training_moves_the_head_and_never_the_frozen_part():
    learner = Learner(dataset=BLOBS, shard=np.arange(600), model="mlp", config=head_config())
    module = learner.trainer.module
    before = {k: v.clone() for k, v in frozen_state(module, "3").items()}
    start = learner.get_vector()
    acc0, _ = learner.evaluate()
    learner.train(60)
    after = frozen_state(module, "3")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(start, learner.get_vector())
    acc1, _ = learner.evaluate()
    assert acc1 > acc0 and acc1 > 0.5  # random ReLU features of separable blobs: a linear head learns them
    # the node's own samples, per class (Bristle's Evaluate action), on the head vector and cached features
    acc, _, per_class, n = learner.evaluate_local(learner.get_vector(), 100)
    assert n == 100 and len(per_class) == 10 and acc > 0.5
    assert learner.x.shape == (600, 64)


def test_cached_features_give_the_same_model_as_the_whole_forward_pass():
    trainer = Trainer("mlp", BLOBS, head_config())
    params = trainer.initial + 0.01 * torch.randn(trainer.dim, generator=torch.Generator().manual_seed(1))
    raw = trainer.evaluate_per_class(params, BLOBS.test_x, BLOBS.test_y, 10)
    cached = trainer.evaluate_per_class(params, trainer.inputs(BLOBS.test_x), BLOBS.test_y, 10)
    assert trainer.inputs(BLOBS.test_x).shape == (200, 64)
    assert raw[0] == cached[0] and raw[1] == pytest.approx(cached[1], rel=1e-5)
    assert raw[2] == cached[2]


def test_frozen_dropout_and_batchnorm_stay_in_eval_mode():
    mnist = load_dataset("mnist")
    trainer = Trainer("cnn-dropout", mnist, head_config())
    trainer.module.train()
    dropouts = [m for name, m in trainer.module.named_modules() if "Dropout" in type(m).__name__]
    assert dropouts and not any(m.training for m in dropouts)
    assert trainer.transfer is not None and trainer.transfer.feature_shape == (128,)


def test_a_head_that_is_not_the_output_disables_the_cache_but_still_trains():
    class Scaled(WithHead):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * self.head(self.body(x))

    trainer = Trainer(Scaled, BLOBS, head_config())
    assert trainer.transfer is not None and not trainer.transfer.cached
    assert trainer.dim == 16 * 10 + 10
    assert trainer.inputs(BLOBS.test_x) is BLOBS.test_x


def test_sim_worker_trains_and_evaluates_heads_on_cached_features():
    trainer = Trainer("mlp", BLOBS, head_config())
    shards = partition(BLOBS.train_y.numpy(), 4, "iid", seed=0)
    worker = SimWorker(trainer, BLOBS, shards, seed=0, step_time=0.01)
    assert worker.data["0"][0].shape == (600, 64)
    new, loss = worker.train("0", 0, trainer.initial, 20)
    assert new.shape == (trainer.dim,) and loss == loss
    acc, _, per_class, n = worker.evaluate("0", new, 50)
    assert n == 50 and 0 <= acc <= 1 and len(per_class) == 10


# ---- the weights file ---------------------------------------------------------------------------------


def _tensors() -> dict[str, torch.Tensor]:
    return {
        "0.weight": torch.randn(3, 4),
        "0.bias": torch.randn(3),
        "bn.num_batches_tracked": torch.tensor(7),
    }


def test_weights_round_trip(tmp_path):
    path = tmp_path / "w.phxw"
    digest = write_weights(path, _tensors(), {"model": "mlp", "seed": 3})
    back = read_weights(path)
    assert back.sha256 == digest and back.provenance == {"model": "mlp", "seed": 3}
    for name, t in _tensors().items():
        assert back.tensors[name].dtype == t.dtype
    t = _tensors()
    torch.manual_seed(0)
    write_weights(path, t, {})
    assert all(torch.equal(read_weights(path).tensors[k], v) for k, v in t.items())


@given(st.data())
def test_any_corruption_is_one_clear_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("w") / "w.phxw"
    write_weights(path, {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, {"model": "mlp"})
    raw = bytearray(path.read_bytes())
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]  # truncated
    else:
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))  # one byte flipped
    path.write_bytes(bytes(raw))
    with pytest.raises(TransferError) as err:
        read_weights(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_header_that_lies_about_its_tensors_is_refused(tmp_path):
    path = tmp_path / "w.phxw"
    payload = np.zeros(4, dtype="<f4").tobytes()
    header = json.dumps(
        {
            "format": 1,
            "provenance": {},
            "tensors": [{"name": "a", "dtype": "float32", "shape": [1000]}],
            "sha256": hashlib.sha256(payload).hexdigest(),
        }
    ).encode()
    body = MAGIC + struct.pack("<I", len(header)) + header + payload
    path.write_bytes(body + hashlib.sha256(body).digest())
    with pytest.raises(TransferError, match="past the end"):
        read_weights(path)


def test_a_file_for_another_model_is_refused(tmp_path):
    path = tmp_path / "w.phxw"
    module = build_model("mlp", (32,), 10, hidden=32)
    write_weights(path, frozen_state(module, "3"), {"model": "mlp-32"})
    with pytest.raises(TransferError, match="made for model mlp-32"):
        Trainer("mlp", BLOBS, head_config(str(path)))


def test_nodes_load_the_frozen_part_of_the_file(tmp_path):
    path = tmp_path / "w.phxw"
    torch.manual_seed(5)
    source = build_model("mlp", (32,), 10)
    digest = write_weights(path, frozen_state(source, "3"), {"model": "mlp"})
    trainer = Trainer("mlp", BLOBS, head_config(str(path)))
    assert torch.equal(trainer.module[1].weight, source[1].weight)
    assert trainer.transfer is not None and trainer.transfer.sha256 == digest
    random = Trainer("mlp", BLOBS, head_config())
    assert not torch.equal(random.module[1].weight, source[1].weight)


# ---- disjointness ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["holdout:0.1", "holdout:0.5", "classes:0,3"])
@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.5", "shards:2"])
def test_shards_never_hold_a_pretraining_sample(source, spec):
    labels = BLOBS.train_y.numpy()
    picked = source_indices(labels, source, seed=4)
    shards = partition_for(BLOBS, 8, spec, seed=1, excluded=picked)
    together = np.concatenate(shards)
    assert len(np.intersect1d(together, picked)) == 0
    assert sorted(together.tolist()) == sorted(set(range(len(labels))) - set(picked.tolist()))


def test_check_features_excludes_the_files_source_from_the_same_pool(tmp_path):
    path = tmp_path / "w.phxw"
    picked = source_indices(BLOBS.train_y.numpy(), "holdout:0.2", seed=9)
    provenance = {
        "model": "mlp",
        "source": "holdout:0.2",
        "seed": 9,
        "source_sha256": indices_sha256(picked),
        "train_labels_sha256": labels_fingerprint(BLOBS.train_y),
    }
    write_weights(path, frozen_state(build_model("mlp", (32,), 10), "3"), provenance)
    settings = SimpleNamespace(train_only="head", features=str(path), model="mlp", seed=0)
    features = check_features(settings, BLOBS)
    assert features is not None and np.array_equal(features.excluded, picked)
    # a file made from another pool excludes nothing
    other = make_blobs(n_train=600, n_test=200, seed=1)
    assert len(check_features(settings, other).excluded) == 0  # type: ignore[union-attr]
    # a source that cannot be reproduced is refused
    write_weights(path, frozen_state(build_model("mlp", (32,), 10), "3"), {**provenance, "seed": 10})
    with pytest.raises(TransferError, match="cannot be reproduced"):
        check_features(settings, BLOBS)


def test_bad_sources_are_refused():
    labels = BLOBS.train_y.numpy()
    for spec in ("holdout:0", "holdout:1", "holdout:x", "classes:", "classes:1,1", "classes:99", "all"):
        with pytest.raises(TransferError):
            source_indices(labels, spec, seed=0)
    with pytest.raises(TransferError, match="every training sample"):
        source_indices(labels, "classes:" + ",".join(map(str, range(10))), seed=0)


@given(st.integers(0, 2**31 - 1), st.integers(1, 6), st.integers(0, 40))
def test_batched_head_evaluation_equals_one_at_a_time(seed, k, n):
    trainer = Trainer("mlp", BLOBS, head_config())
    gen = torch.Generator().manual_seed(seed)
    vectors = [trainer.initial + torch.randn(trainer.dim, generator=gen) for _ in range(k)]
    x, y = trainer.inputs(BLOBS.test_x[:n]), BLOBS.test_y[:n]
    batched = trainer.evaluate_per_class_many(vectors, x, y, 10)
    for v, (acc, loss, per_class) in zip(vectors, batched, strict=True):
        acc1, loss1, per_class1 = trainer.evaluate_per_class(v, x, y, 10)
        assert acc == pytest.approx(acc1, nan_ok=True) and loss == pytest.approx(loss1, rel=1e-4, abs=1e-5, nan_ok=True)
        assert per_class == pytest.approx(per_class1, nan_ok=True)


def test_a_checkpoint_resumes_only_on_the_same_frozen_features(tmp_path):
    path = tmp_path / "w.phxw"
    write_weights(path, frozen_state(build_model("mlp", (32,), 10), "3"), {"model": "mlp"})
    shard = np.arange(100)
    on_file = Learner(dataset=BLOBS, shard=shard, config=head_config(str(path)))
    on_random = Learner(dataset=BLOBS, shard=shard, config=head_config())
    whole = Learner(dataset=BLOBS, shard=shard)
    saved = on_file.checkpoint_extra()
    on_file.check_checkpoint_extra(saved, "ckpt")
    whole.check_checkpoint_extra({}, "ckpt")
    for other in (on_random, whole):
        with pytest.raises(ValueError, match="trained on frozen features"):
            other.check_checkpoint_extra(saved, "ckpt")
