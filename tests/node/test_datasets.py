"""IDX reading of real files, the embedded MNIST split, and clear errors for corrupt files."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from phalanx.node.datasets import (
    EMBEDDED_DIR,
    DatasetError,
    load_dataset,
    load_idx_dir,
    read_idx,
    verify_embedded,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist-10k"


def test_embedded_mnist_is_the_real_test_set_split_8000_2000():
    verify_embedded()
    ds = load_dataset("mnist")
    assert ds.train_x.shape == (8000, 1, 28, 28) and ds.test_x.shape == (2000, 1, 28, 28)
    assert ds.num_classes == 10
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    # The first MNIST test labels are 7, 2, 1, 0, 4 (a fact of the published file).
    assert ds.train_y[:5].tolist() == [7, 2, 1, 0, 4]
    assert set(ds.test_y.tolist()) == set(range(10))


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data not present")
def test_embedded_copy_equals_the_shared_files():
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert (EMBEDDED_DIR / name).read_bytes() == (SHARED / name).read_bytes()


def _write_idx(path: Path, array: np.ndarray, magic: int, *, gz: bool) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    body = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(body) if gz else body)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_directory_with_train_and_test_pairs(tmp_path, gz):
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    _write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", rng.integers(0, 255, (30, 28, 28)), 2051, gz=gz)
    _write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", np.arange(30) % 10, 2049, gz=gz)
    _write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", rng.integers(0, 255, (12, 28, 28)), 2051, gz=gz)
    _write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", np.arange(12) % 10, 2049, gz=gz)
    ds = load_dataset(f"idx:{tmp_path}")
    assert ds.train_x.shape == (30, 1, 28, 28) and ds.test_x.shape == (12, 1, 28, 28)
    assert ds.train_y.tolist() == [i % 10 for i in range(30)]


def test_wrong_magic_is_named(tmp_path):
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28)), 2049, gz=False)
    with pytest.raises(DatasetError, match="wrong IDX magic 2049, expected 2051"):
        read_idx(tmp_path / "t10k-images-idx3-ubyte", kind="images")


def test_truncated_file_is_named(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    _write_idx(path, np.zeros((3, 28, 28)), 2051, gz=False)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(path, kind="images")


def test_corrupt_gzip_is_named(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(b"\x1f\x8b\x08 not really gzip")
    with pytest.raises(DatasetError, match="corrupt gzip"):
        read_idx(path, kind="images")


def test_missing_directory_and_unknown_name():
    with pytest.raises(DatasetError, match="not a directory"):
        load_idx_dir(Path("/nonexistent/phalanx"), name="x")
    with pytest.raises(DatasetError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")


def test_blobs_are_deterministic():
    a, b = load_dataset("blobs"), load_dataset("blobs")
    assert torch.equal(a.train_x, b.train_x)
    assert a.feature_shape == (32,)
