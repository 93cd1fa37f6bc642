"""Datasets read from real files: MNIST-style IDX (gzipped or not), the embedded MNIST test set, synthetic blobs.

A dataset spec is a string:

- ``mnist`` — the embedded MNIST test set (10,000 images shipped in the package), split deterministically
  into the first 8,000 images for training and the last 2,000 for testing;
- ``idx:PATH`` — a directory of IDX files: ``train-images-idx3-ubyte[.gz]`` / ``train-labels-idx1-ubyte[.gz]``
  and ``t10k-images-idx3-ubyte[.gz]`` / ``t10k-labels-idx1-ubyte[.gz]`` (full MNIST, Fashion-MNIST, KMNIST);
  a directory holding only the t10k pair is split 80/20 like the embedded set;
- ``blobs`` — Gaussian blobs (10 classes, 32 features), small and fast, for tests.

Every error here is a :class:`DatasetError` whose message names the file and the problem.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

EMBEDDED_DIR = Path(__file__).resolve().parent / "mnist-10k"
IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
DATASET_NAMES = ("mnist", "blobs", "idx:PATH")


class DatasetError(ValueError):
    """A dataset spec or file that cannot be used."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Dataset:
    """A labelled train/test split held in memory as torch tensors.

    ``train_x``/``test_x`` are float32 of shape ``(N, *feature_shape)``; ``*_y`` are int64 class labels.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    def __post_init__(self) -> None:
        if self.train_x.shape[0] != self.train_y.shape[0] or self.test_x.shape[0] != self.test_y.shape[0]:
            raise DatasetError(f"{self.name}: images and labels differ in count")
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise DatasetError(f"{self.name}: train and test features differ in shape")

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def is_image(self) -> bool:
        return len(self.feature_shape) == 3


def _open(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror})") from None
    if path.suffix == ".gz":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(f"{path}: corrupt gzip data ({exc})") from None
    return raw


def read_idx(path: Path, *, magic: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (magic 2051 for images, 2049 for labels) into a uint8 array.

    The header is a big-endian magic number followed by one big-endian uint32 per dimension; the body
    must hold exactly the product of the dimensions in bytes.
    """
    data = _open(path)
    if len(data) < 8:
        raise DatasetError(f"{path}: truncated IDX header ({len(data)} bytes)")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DatasetError(f"{path}: wrong IDX magic {found}, expected {magic}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != expected:
        raise DatasetError(
            f"{path}: IDX body holds {len(data) - header} bytes, header {dims} needs {expected} (truncated?)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _pair(directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray] | None:
    images = _find(directory, f"{prefix}-images-idx3-ubyte")
    labels = _find(directory, f"{prefix}-labels-idx1-ubyte")
    if images is None and labels is None:
        return None
    if images is None or labels is None:
        raise DatasetError(f"{directory}: found only one of the {prefix} images/labels pair")
    x = read_idx(images, magic=IMAGE_MAGIC)
    y = read_idx(labels, magic=LABEL_MAGIC)
    if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise DatasetError(f"{directory}: {prefix} images {x.shape} and labels {y.shape} do not match")
    return x, y


def _images_to_tensor(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(x.astype(np.float32) / 255.0)
    return ((t - MNIST_MEAN) / MNIST_STD).unsqueeze(1).contiguous()


def load_idx_dir(directory: Path, *, name: str, split: int = 8000) -> Dataset:
    """Load a directory of IDX files; a lone t10k pair is split into the first ``split`` and the rest."""
    if not directory.is_dir():
        raise DatasetError(f"{directory}: not a directory")
    train = _pair(directory, "train")
    test = _pair(directory, "t10k")
    if test is None:
        raise DatasetError(f"{directory}: no t10k-images-idx3-ubyte[.gz] / t10k-labels-idx1-ubyte[.gz] found")
    if train is None:
        x, y = test
        if x.shape[0] < 2:
            raise DatasetError(f"{directory}: too few images ({x.shape[0]}) to split")
        cut = split if x.shape[0] > split else int(x.shape[0] * 0.8)
        train, test = (x[:cut], y[:cut]), (x[cut:], y[cut:])
    num_classes = int(max(train[1].max(), test[1].max())) + 1
    return Dataset(
        name=name,
        train_x=_images_to_tensor(train[0]),
        train_y=torch.from_numpy(train[1].astype(np.int64)),
        test_x=_images_to_tensor(test[0]),
        test_y=torch.from_numpy(test[1].astype(np.int64)),
        num_classes=num_classes,
    )


def make_blobs(
    *, n_train: int = 2000, n_test: int = 500, classes: int = 10, features: int = 32, seed: int = 0
) -> Dataset:
    """Gaussian blobs: class c is N(mu_c, I) with mu_c drawn once from N(0, 2^2 I). Deterministic in ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, features, generator=gen) * 2.0
    total = n_train + n_test
    y = torch.arange(total) % classes
    y = y[torch.randperm(total, generator=gen)]
    x = centers[y] + torch.randn(total, features, generator=gen)
    return Dataset(
        name="blobs",
        train_x=x[:n_train].contiguous(),
        train_y=y[:n_train].contiguous(),
        test_x=x[n_train:].contiguous(),
        test_y=y[n_train:].contiguous(),
        num_classes=classes,
    )


def verify_embedded() -> None:
    """Check the embedded files against the shipped MD5SUMS."""
    for line in (EMBEDDED_DIR / "MD5SUMS").read_text().splitlines():
        digest, _, fname = line.strip().partition("  ")
        if fname and hashlib.md5((EMBEDDED_DIR / fname).read_bytes()).hexdigest() != digest:
            raise DatasetError(f"{EMBEDDED_DIR / fname}: checksum mismatch")


@lru_cache(maxsize=8)
def load_dataset(spec: str) -> Dataset:
    """Load a dataset by spec (see the module docstring). Cached: tensors are shared, never mutate them."""
    if spec in ("mnist", "mnist-10k"):
        return load_idx_dir(EMBEDDED_DIR, name="mnist")
    if spec == "blobs":
        return make_blobs()
    if spec.startswith("idx:"):
        path = Path(spec[4:]).expanduser()
        return load_idx_dir(path, name=f"idx:{path}")
    raise DatasetError(f"unknown dataset {spec!r}; choose one of: {', '.join(DATASET_NAMES)}")
