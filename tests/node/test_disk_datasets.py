"""Datasets from real files written here: CIFAR python and binary batches, NPZ, CSV, multi-channel IDX,
normalisation, one-line errors naming the file, refused pickles, and partitions over all of them."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phalanx.node.datasets import DatasetError, _labels, channel_stats, from_arrays, load_dataset
from phalanx.node.formats import BatchUnpickler, read_cifar_binary
from phalanx.node.partition import partition

RNG = np.random.default_rng(0)


def _cifar_arrays(n: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    return RNG.integers(0, 256, (n, 3072), dtype=np.uint8), RNG.integers(0, classes, n)


def write_cifar10_python(folder: Path, *, per_batch: int = 20, batches: int = 5, protocol: int = 2) -> dict:
    """The layout of cifar-10-python.tar.gz: a dict with bytes keys per batch, pickled (the official files
    were written by Python 2's cPickle, protocol 2)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, batches + 1)] + ["test_batch"]:
        x, y = _cifar_arrays(per_batch, 10)
        batch = {
            b"batch_label": name.encode(),
            b"labels": y.tolist(),
            b"data": x,
            b"filenames": [b"a.png"] * per_batch,
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        written[name] = (x, y)
    return written


def write_cifar_binary(folder: Path, names: list[str], *, label_bytes: int, n: int = 15) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in names:
        x, _ = _cifar_arrays(n, 10)
        labels = np.stack([RNG.integers(0, 20, n), RNG.integers(0, 100, n)], axis=1)[:, -label_bytes:]
        if label_bytes == 1:
            labels = RNG.integers(0, 10, (n, 1))
        (folder / name).write_bytes(np.concatenate([labels.astype(np.uint8), x], axis=1).tobytes())
        written[name] = (x, labels)
    return written


def test_cifar10_python_batches(tmp_path):
    written = write_cifar10_python(tmp_path / "cifar-10-batches-py")
    ds = load_dataset(f"cifar10:{tmp_path}")  # the parent of the unpacked folder works too
    assert ds.train_x.shape == (100, 3, 32, 32) and ds.test_x.shape == (20, 3, 32, 32)
    assert ds.num_classes == 10
    expected_y = np.concatenate([written[f"data_batch_{i}"][1] for i in range(1, 6)])
    assert ds.train_y.tolist() == expected_y.tolist()
    # Pixel (channel 1, row 0, column 5) of image 0 is byte 1024 + 5 of its row: R, G, B planes, row-major.
    raw = written["data_batch_1"][0][0, 1024 + 5] / 255.0
    assert ds.train_x[0, 1, 0, 5].item() == pytest.approx((raw - ds.mean[1]) / ds.std[1], abs=1e-5)
    # Normalised per channel with the training set's own statistics.
    assert len(ds.mean) == 3
    torch.testing.assert_close(ds.train_x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        ds.train_x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("protocol", [2, pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL])
def test_cifar_python_batches_of_any_pickle_protocol(tmp_path, protocol):
    write_cifar10_python(tmp_path, batches=1, protocol=protocol)
    assert load_dataset(f"cifar10:{tmp_path}:norm=none").train_x.shape == (20, 3, 32, 32)


def test_cifar100_python_fine_and_coarse(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 40), ("test", 10)):
        x, fine = _cifar_arrays(n, 100)
        batch = {b"data": x, b"fine_labels": fine.tolist(), b"coarse_labels": (fine // 5).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    fine_ds = load_dataset(f"cifar100:{folder}")
    coarse_ds = load_dataset(f"cifar100:{folder}:labels=coarse")
    assert fine_ds.num_classes == 100 and coarse_ds.num_classes == 20
    assert torch.equal(coarse_ds.train_y, fine_ds.train_y // 5)


def test_cifar10_and_100_binary_batches(tmp_path):
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    written = write_cifar_binary(tmp_path / "cifar-10-batches-bin", names, label_bytes=1)
    ds = load_dataset(f"cifar10:{tmp_path / 'cifar-10-batches-bin'}:norm=none")
    assert ds.train_x.shape == (75, 3, 32, 32) and ds.test_x.shape == (15, 3, 32, 32)
    x, labels = written["test_batch.bin"]
    assert ds.test_y.tolist() == labels[:, 0].tolist()
    torch.testing.assert_close(ds.test_x.reshape(15, -1), torch.from_numpy(x / 255.0).float())

    written = write_cifar_binary(
        tmp_path / "c100" / "cifar-100-binary", ["train.bin", "test.bin"], label_bytes=2
    )
    fine = load_dataset(f"cifar100:{tmp_path / 'c100'}")
    coarse = load_dataset(f"cifar100:{tmp_path / 'c100'}:labels=coarse")
    assert fine.train_y.tolist() == written["train.bin"][1][:, 1].tolist()
    assert coarse.train_y.tolist() == written["train.bin"][1][:, 0].tolist() and coarse.num_classes == 20


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_pickle_naming_any_other_global_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10_python(folder, batches=1)
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=2))
    with pytest.raises(
        DatasetError, match=r"data_batch_1: not a CIFAR python batch \(refused global (posix|os)\.system\)"
    ):
        load_dataset(f"cifar10:{folder}")
    with pytest.raises(pickle.UnpicklingError, match=r"refused global builtins\.eval"):
        BatchUnpickler(__import__("io").BytesIO(b"cbuiltins\neval\n.")).load()


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:100]), "test_batch: not a CIFAR python batch"),
        (
            lambda p: p.write_bytes(pickle.dumps([1, 2], protocol=2)),
            "test_batch: not a CIFAR python batch (holds list",
        ),
        (
            lambda p: p.write_bytes(pickle.dumps({b"data": np.zeros((2, 5), np.uint8), b"labels": [0, 1]})),
            "uint8 'data'",
        ),
        (
            lambda p: p.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]})),
            "list of 2",
        ),
        (
            lambda p: p.write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]})),
            "label 10 out of range",
        ),
    ],
)
def test_bad_cifar_files_are_one_line_naming_the_file(tmp_path, damage, needle):
    write_cifar10_python(tmp_path, batches=1)
    damage(tmp_path / "test_batch")
    with pytest.raises(DatasetError) as err:
        load_dataset(f"cifar10:{tmp_path}")
    assert needle in str(err.value) and str(tmp_path / "test_batch") in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_cifar_binary_and_missing_folder(tmp_path):
    write_cifar_binary(tmp_path, ["data_batch_1.bin", "test_batch.bin"], label_bytes=1)
    (tmp_path / "test_batch.bin").write_bytes(b"\0" * 3000)
    with pytest.raises(DatasetError, match=r"test_batch.bin: 3000 bytes is not a whole number of 3073-byte"):
        load_dataset(f"cifar10:{tmp_path}")
    with pytest.raises(DatasetError, match="no CIFAR-100 batches"):
        load_dataset(f"cifar100:{tmp_path}")
    with pytest.raises(DatasetError, match="not a directory"):
        load_dataset("cifar10:/nonexistent/phalanx")


def test_npz_with_each_naming(tmp_path):
    x, y = RNG.normal(3.0, 2.0, (50, 6)), RNG.integers(0, 4, 50)
    np.savez(tmp_path / "a.npz", x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    np.savez(tmp_path / "b.npz", train_x=x[:40], train_y=y[:40], test_x=x[40:], test_y=y[40:])
    np.savez(tmp_path / "c.npz", x=x, y=y)
    a, b = load_dataset(f"npz:{tmp_path / 'a.npz'}"), load_dataset(f"npz:{tmp_path / 'b.npz'}")
    assert torch.equal(a.train_x, b.train_x) and a.num_classes == 4 and a.feature_shape == (6,)
    torch.testing.assert_close(a.train_x.mean(0), torch.zeros(6), atol=1e-5, rtol=0)  # per column
    c = load_dataset(f"npz:{tmp_path / 'c.npz'}:test=0.3")
    assert len(c.train_y) == 35 and len(c.test_y) == 15
    assert sorted(c.train_y.tolist() + c.test_y.tolist()) == sorted(y.tolist())


def test_npz_channels_last_images_and_given_normalisation(tmp_path):
    x = RNG.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "img.npz", x_train=x[:10], y_train=np.arange(10) % 2, x_test=x[10:], y_test=[0, 1])
    ds = load_dataset(f"npz:{tmp_path / 'img.npz'}:norm=0.5,0.25,0/0.5,0.5,2")
    assert ds.feature_shape == (3, 8, 8)
    expected = (x[3, 2, 1, :] / 255.0 - np.array([0.5, 0.25, 0])) / np.array([0.5, 0.5, 2])
    torch.testing.assert_close(ds.train_x[3, :, 2, 1].double(), torch.from_numpy(expected), atol=1e-6, rtol=0)


def test_npz_refuses_pickled_objects_and_names_missing_keys(tmp_path):
    np.savez(
        tmp_path / "obj.npz", x_train=np.array([{"a": 1}], dtype=object), y_train=[0], x_test=[0], y_test=[0]
    )
    with pytest.raises(
        DatasetError, match=r"obj.npz: not a readable NPZ file \(Object arrays cannot be loaded"
    ):
        load_dataset(f"npz:{tmp_path / 'obj.npz'}")
    np.savez(tmp_path / "k.npz", features=np.zeros(3))
    with pytest.raises(DatasetError, match=r"k.npz: NPZ holds \['features'\]; expected x_train"):
        load_dataset(f"npz:{tmp_path / 'k.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match=r"junk\.npz: not a readable NPZ"):
        load_dataset(f"npz:{tmp_path / 'junk.npz'}")


def test_csv_label_column_by_name_index_and_default(tmp_path):
    rows = ["age,income,species"] + [f"{20 + i},{1000 * i},{'cat' if i % 3 else 'dog'}" for i in range(30)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(f"csv:{tmp_path / 't.csv'}:label=species")
    assert ds.feature_shape == (2,) and ds.num_classes == 2 and len(ds.train_y) + len(ds.test_y) == 30
    assert torch.equal(
        load_dataset(f"csv:{tmp_path / 't.csv'}").train_x, ds.train_x
    )  # last column by default
    by_index = load_dataset(f"csv:{tmp_path / 't.csv'}:label=-1:norm=none")
    assert set(by_index.train_x[:, 0].tolist()) <= set(range(20, 50))
    # Headerless, numeric labels in the first column; a folder with train.csv and test.csv.
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.csv").write_text("".join(f"{i % 3},{i},{i * 2}\n" for i in range(9)))
    (tmp_path / "d" / "test.csv").write_text("2,1,1\n0,5,5\n")
    d = load_dataset(f"csv:{tmp_path / 'd'}:label=0")
    assert d.train_y.tolist() == [i % 3 for i in range(9)] and d.test_y.tolist() == [2, 0]


@pytest.mark.parametrize(
    ("text", "options", "needle"),
    [
        ("a,b,label\n1,2,0\n1,x,1\n", "", "line 3, column 'b': 'x' is not a number"),
        ("a,b,label\n1,2,0\n1,1\n", "", "line 3 has 2 fields, the first row has 3"),
        ("a,b\n1,0\n2,1\n", ":label=c", "no label column 'c' (columns: a, b)"),
        ("", "", "empty CSV file"),
    ],
)
def test_bad_csv_is_one_line_naming_file_and_place(tmp_path, text, options, needle):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(DatasetError) as err:
        load_dataset(f"csv:{tmp_path / 'bad.csv'}{options}")
    assert needle in str(err.value) and "bad.csv" in str(err.value) and "\n" not in str(err.value)


def _write_idx(path: Path, array: np.ndarray, code: int = 0x08, dtype: str = ">u1") -> None:
    header = bytes([0, 0, code, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(dtype).tobytes())


def test_idx_of_any_shape(tmp_path):
    x = RNG.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)  # N x H x W x C: magic 2052
    _write_idx(tmp_path / "train-images-idx4-ubyte", x)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(10) % 5)
    _write_idx(tmp_path / "t10k-images-idx4-ubyte", x[:4])
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(4))
    ds = load_dataset(f"idx:{tmp_path}:norm=none")
    assert ds.feature_shape == (3, 32, 32) and ds.num_classes == 5
    torch.testing.assert_close(ds.train_x[2, 1, 4, 7].item(), x[2, 4, 7, 1] / 255.0)
    # float32 IDX (element type 0x0D), channels first
    f = tmp_path / "f"
    f.mkdir()
    _write_idx(f / "t10k-images-idx4-ubyte", RNG.normal(size=(20, 2, 5, 5)), code=0x0D, dtype=">f4")
    _write_idx(f / "t10k-labels-idx1-ubyte", np.arange(20) % 2)
    fd = load_dataset(f"idx:{f}")
    assert fd.feature_shape == (2, 5, 5) and len(fd.train_y) == 16 and len(fd.mean) == 2


def test_grayscale_idx_is_normalised_from_its_training_data(tmp_path):
    x = RNG.integers(0, 128, (30, 28, 28), dtype=np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", x)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(30) % 10)
    ds = load_dataset(f"idx:{tmp_path}")
    assert ds.mean[0] == pytest.approx(float((x[:24] / 255.0).mean()), rel=1e-6)
    assert abs(ds.train_x.mean().item()) < 1e-5


def test_spec_errors():
    with pytest.raises(DatasetError, match="unknown option 'lable' for csv"):
        load_dataset("csv:/x.csv:lable=3")
    with pytest.raises(DatasetError, match="norm must be train, none or MEAN/STD"):
        from_arrays("t", np.zeros((2, 3)), [0, 1], np.zeros((1, 3)), [0], norm="0.5")
    with pytest.raises(DatasetError, match="norm gives 2/2 values for 3 channels"):
        from_arrays("t", np.zeros((2, 3)), [0, 1], np.zeros((1, 3)), [0], norm="1,2/1,2")
    with pytest.raises(DatasetError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.5", "shards:2"])
def test_partitions_work_on_every_format(tmp_path, spec):
    write_cifar10_python(tmp_path / "c", per_batch=40)
    np.savez(tmp_path / "n.npz", x=RNG.normal(size=(200, 4)), y=RNG.integers(0, 3, 200))
    (tmp_path / "t.csv").write_text("".join(f"{i},{i % 7},c{i % 4}\n" for i in range(150)))
    write_cifar_binary(tmp_path / "b", ["data_batch_1.bin", "test_batch.bin"], label_bytes=1, n=120)
    for ds_spec in (
        f"cifar10:{tmp_path / 'c'}",
        f"npz:{tmp_path / 'n.npz'}",
        f"csv:{tmp_path / 't.csv'}",
        f"cifar10:{tmp_path / 'b'}",
    ):
        ds = load_dataset(ds_spec)
        shards = partition(ds.train_y.numpy(), 8, spec, seed=1)
        covered = np.sort(np.concatenate(shards))
        assert np.array_equal(covered, np.arange(len(ds.train_y))), ds_spec


@given(
    shape=st.tuples(st.integers(1, 40), st.integers(1, 4), st.integers(1, 5)),
    chunk=st.integers(1, 50),
    seed=st.integers(0, 1000),
)
def test_chunked_channel_stats_equal_numpys(shape, chunk, seed):
    x = np.random.default_rng(seed).normal(3.0, 2.0, shape).astype(np.float32)
    mean, std = channel_stats(x, chunk=chunk)
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=(0, 2)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(std, x.astype(np.float64).std(axis=(0, 2)), rtol=1e-10, atol=1e-12)


@given(st.lists(st.sampled_from(["cat", "dog", "emu", "yak", "10", "2"]), min_size=2, max_size=30))
def test_class_names_are_numbered_in_sorted_order(names):
    train, test = np.array(names[: len(names) // 2 + 1]), np.array(names[len(names) // 2 + 1 :] or ["cat"])
    ytr, yte, classes = _labels(train, test, "t")
    seen = sorted(set(train.tolist()) | set(test.tolist()))
    if all(n.isdigit() for n in seen):
        assert classes == max(int(n) for n in seen) + 1 and ytr.tolist() == [int(n) for n in train]
    else:
        assert classes == len(seen)
        assert [seen[i] for i in ytr] == train.tolist() and [seen[i] for i in yte] == test.tolist()


@given(n=st.integers(1, 6), fine=st.booleans(), seed=st.integers(0, 100))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_cifar_binary_records_round_trip(tmp_path, n, fine, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 100, (n, 2), dtype=np.uint8)
    pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    path = tmp_path / f"r{seed}_{n}.bin"
    path.write_bytes(np.concatenate([labels, pixels], axis=1).tobytes())
    x, y = read_cifar_binary(path, label_bytes=2, label_index=int(fine))
    assert np.array_equal(x.reshape(n, -1), pixels) and np.array_equal(y, labels[:, int(fine)])
