"""Datasets: the embedded MNIST test set, synthetic blobs, files on the local disk, and user loaders by import path.

A dataset spec is a string; options follow the path as ``:key=value``:

- ``mnist``: the embedded MNIST test set (10,000 images shipped in the package), split deterministically
  into the first 8,000 images for training and the last 2,000 for testing, normalised with MNIST's constants;
- ``blobs``: Gaussian blobs (10 classes, 32 features), small and fast, for tests;
- ``idx:PATH``: a directory of IDX files, ``train-images-idxK-ubyte[.gz]`` / ``train-labels-idx1-ubyte[.gz]``
  and ``t10k-images-idxK-ubyte[.gz]`` / ``t10k-labels-idx1-ubyte[.gz]``; images of any shape (N x H x W,
  N x H x W x C or N x C x H x W) and IDX element type; a lone t10k pair is split 80/20 like the embedded set;
- ``cifar10:PATH`` / ``cifar100:PATH``: the official archives unpacked at PATH, python batches
  (``cifar-10-batches-py``: ``data_batch_1..5``, ``test_batch``; ``cifar-100-python``: ``train``, ``test``) or
  binary ones (``cifar-10-batches-bin``: ``data_batch_1..5.bin``, ``test_batch.bin``; ``cifar-100-binary``:
  ``train.bin``, ``test.bin``); PATH may be that folder or its parent. ``cifar100:PATH:labels=coarse`` takes
  the 20 superclasses;
- ``npz:PATH``: arrays ``x_train, y_train, x_test, y_test`` (or ``train_x, ...``, or ``x, y`` split by ``test=``);
- ``csv:PATH[:label=COL]``: numeric feature columns and one label column (a file split by ``test=``, or a
  folder with ``train.csv`` and ``test.csv``);
- ``module:function``: ``function()`` from an importable module returns a :class:`Dataset`, a tuple
  ``(x_train, y_train, x_test, y_test)`` of tensors or arrays, or a pair of torch ``Dataset`` objects.

Options: ``norm=train`` (default for files: per-channel mean and standard deviation of the training set;
per-column for tabular data), ``norm=none`` (default for ``module:function``), or ``norm=MEAN/STD`` given,
each one number or one per channel separated by commas (``norm=0.49,0.48,0.45/0.25,0.24,0.26``);
``test=FRACTION`` (default 0.2), the share of a single labelled set held out for testing by a fixed shuffle.
Images stored as uint8 are scaled to [0, 1] before normalisation. Labels that are not whole numbers (CSV
class names) are numbered in sorted order.

Every error here is a :class:`DatasetError` whose message names the file and the problem.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from phalanx.node import formats
from phalanx.node.formats import DatasetError, read_idx
from phalanx.node.imports import ImportPathError, is_import_path, resolve

__all__ = ["DATASET_NAMES", "Dataset", "DatasetError", "load_dataset", "make_blobs", "read_idx"]

EMBEDDED_DIR = Path(__file__).resolve().parent / "mnist-10k"
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
DATASET_NAMES = (
    "mnist",
    "blobs",
    "idx:PATH",
    "cifar10:PATH",
    "cifar100:PATH",
    "npz:PATH",
    "csv:PATH[:label=COL]",
    "module:function",
)
OPTIONS = {
    "idx": {"norm"},
    "cifar10": {"norm"},
    "cifar100": {"norm", "labels"},
    "npz": {"norm", "test"},
    "csv": {"norm", "test", "label"},
    "import": {"norm"},
}
_OPTION = re.compile(r"^(\w+)=(.*)$")
SPLIT_SEED = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Dataset:
    """A labelled train/test split held in memory as torch tensors.

    ``train_x``/``test_x`` are float32 of shape ``(N, *feature_shape)``; ``*_y`` are int64 class labels.
    ``mean``/``std`` record the normalisation applied (per channel; empty when none).
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

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


# ---------------------------------------------------------------------------------------------------- arrays -> Dataset


def _features(x: Any, where: str) -> np.ndarray:
    """Features as a float array: (N,) -> (N, 1); (N, H, W) -> (N, 1, H, W); channels-last images
    (N, H, W, C with C in 1, 3, 4 and H not) -> (N, C, H, W); uint8 scaled to [0, 1]."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype.kind not in "biuf" or x.ndim < 1:
        raise DatasetError(f"{where}: features must be numbers, got {x.dtype} of shape {x.shape}")
    if x.ndim in (1, 3):
        x = x[:, None]
    elif x.ndim == 4 and x.shape[3] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    out = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    if not np.isfinite(out).all():
        raise DatasetError(f"{where}: features hold NaN or infinite values")
    return np.ascontiguousarray(out)


def _whole_numbers(a: np.ndarray) -> bool:
    if a.dtype.kind in "biu":
        return True
    if a.dtype.kind == "f":
        return bool(np.isfinite(a).all() and (a == np.round(a)).all())
    return a.dtype.kind == "U" and all(re.fullmatch(r"\d+", v) for v in a.tolist())


def _labels(train: Any, test: Any, where: str) -> tuple[np.ndarray, np.ndarray, int]:
    """int64 labels and the class count: whole numbers >= 0 are kept; anything else (class names) is
    numbered in sorted order of the values seen in either split."""
    arrays = [
        t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t) for t in (train, test)
    ]
    for a in arrays:
        if a.ndim != 1:
            raise DatasetError(f"{where}: labels must be one-dimensional, got shape {a.shape}")
    both = np.concatenate(arrays)
    if _whole_numbers(both):
        whole = both.astype(np.int64)
        if len(whole) and whole.min() < 0:
            raise DatasetError(f"{where}: negative label {int(whole.min())}")
        classes = int(whole.max()) + 1 if len(whole) else 0
    else:
        names, whole = np.unique(both.astype(str), return_inverse=True)
        whole = whole.astype(np.int64)
        classes = len(names)
    cut = len(arrays[0])
    return whole[:cut], whole[cut:], classes


def _parse_norm(norm: str, where: str) -> tuple[np.ndarray, np.ndarray] | str:
    if norm in ("train", "none"):
        return norm
    mean_text, slash, std_text = norm.partition("/")
    try:
        mean = np.array([float(v) for v in mean_text.split(",")], dtype=np.float64)
        std = np.array([float(v) for v in std_text.split(",")], dtype=np.float64)
    except ValueError:
        mean = std = np.empty(0)
    if not slash or not len(mean) or not len(std) or not np.isfinite(mean).all() or not (std > 0).all():
        raise DatasetError(
            f"{where}: norm must be train, none or MEAN/STD with STD > 0 (e.g. 0.5,0.5,0.5/0.25,0.25,0.25), got {norm!r}"
        )
    return mean, std


def channel_stats(x: np.ndarray, *, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (population) standard deviation of each channel (axis 1) of ``x``, in float64, two passes
    over chunks of samples, so CIFAR-10's 600 MB of float32 needs no float64 copy of itself."""
    axes = tuple(i for i in range(x.ndim) if i != 1)
    count = x.size // x.shape[1]
    mean = x.sum(axis=axes, dtype=np.float64) / count
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    squares = np.zeros(x.shape[1], dtype=np.float64)
    for start in range(0, len(x), chunk):
        d = x[start : start + chunk].astype(np.float64) - mean.reshape(shape)
        squares += (d * d).sum(axis=axes)
    return mean, np.sqrt(squares / count)


def _normalise(train: np.ndarray, test: np.ndarray, norm: str, where: str) -> tuple[np.ndarray, ...]:
    """Subtract a mean and divide by a standard deviation per channel (axis 1), computed from ``train`` or
    given; in place (the arrays are this module's own copies)."""
    rule = _parse_norm(norm, where)
    if rule == "none":
        return train, test, np.empty(0), np.empty(0)
    channels = train.shape[1]
    if isinstance(rule, str):
        mean, std = channel_stats(train)
        std[std == 0] = 1.0  # a constant channel or column is centred, not blown up
    else:
        mean, std = rule
        if len(mean) not in (1, channels) or len(std) not in (1, channels):
            raise DatasetError(f"{where}: norm gives {len(mean)}/{len(std)} values for {channels} channels")
        mean, std = np.broadcast_to(mean, (channels,)), np.broadcast_to(std, (channels,))
    shape = (1, channels) + (1,) * (train.ndim - 2)
    m, s = mean.reshape(shape).astype(np.float32), std.reshape(shape).astype(np.float32)
    for x in (train, test):
        x -= m
        x /= s
    return train, test, mean, std


def from_arrays(
    name: str,
    x_train: Any,
    y_train: Any,
    x_test: Any,
    y_test: Any,
    *,
    norm: str = "train",
    num_classes: int = 0,
) -> Dataset:
    """A :class:`Dataset` from arrays or tensors of features and labels (see :func:`_features`, :func:`_labels`)."""
    train, test = _features(x_train, name), _features(x_test, name)
    if train.shape[1:] != test.shape[1:]:
        raise DatasetError(
            f"{name}: train features {train.shape[1:]} and test features {test.shape[1:]} differ"
        )
    if len(train) == 0:
        raise DatasetError(f"{name}: no training samples")
    ytr, yte, classes = _labels(y_train, y_test, name)
    if len(ytr) != len(train) or len(yte) != len(test):
        raise DatasetError(f"{name}: {len(train)}/{len(test)} samples but {len(ytr)}/{len(yte)} labels")
    if num_classes and classes > num_classes:
        raise DatasetError(f"{name}: label {classes - 1} out of range for {num_classes} classes")
    train, test, mean, std = _normalise(train, test, norm, name)
    return Dataset(
        name=name,
        train_x=torch.from_numpy(np.ascontiguousarray(train, dtype=np.float32)),
        train_y=torch.from_numpy(ytr),
        test_x=torch.from_numpy(np.ascontiguousarray(test, dtype=np.float32)),
        test_y=torch.from_numpy(yte),
        num_classes=max(classes, num_classes),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
    )


def _split(x: np.ndarray, y: np.ndarray, test: str, where: str) -> tuple[np.ndarray, ...]:
    """Hold out a ``test`` fraction of one labelled set, by a fixed shuffle (files are often sorted by label)."""
    try:
        fraction = float(test)
    except ValueError:
        fraction = -1.0
    if not 0 < fraction < 1:
        raise DatasetError(f"{where}: test must be a fraction in (0, 1), got {test!r}")
    if len(x) != len(y):
        raise DatasetError(f"{where}: {len(x)} samples but {len(y)} labels")
    n_test = max(1, round(len(x) * fraction))
    if n_test >= len(x):
        raise DatasetError(f"{where}: too few samples ({len(x)}) to hold out a test set")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    return x[order[n_test:]], y[order[n_test:]], x[order[:n_test]], y[order[:n_test]]


# ---------------------------------------------------------------------------------------------------- IDX


def _find(directory: Path, pattern: str) -> Path | None:
    found = sorted(
        p for p in directory.glob(pattern) if p.is_file() and re.fullmatch(r"[^.]+(\.gz)?", p.name)
    )
    return found[0] if found else None


def _pair(directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray] | None:
    images = _find(directory, f"{prefix}-images-idx*-ubyte*")
    labels = _find(directory, f"{prefix}-labels-idx1-ubyte*")
    if images is None and labels is None:
        return None
    if images is None or labels is None:
        raise DatasetError(f"{directory}: found only one of the {prefix} images/labels pair")
    x = read_idx(images, kind="images")
    y = read_idx(labels, kind="labels")
    if x.shape[0] != y.shape[0]:
        raise DatasetError(f"{directory}: {prefix} images {x.shape} and labels {y.shape} do not match")
    return x, y


def load_idx_dir(directory: Path, *, name: str, split: int = 8000, norm: str = "train") -> Dataset:
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
    return from_arrays(name, train[0], train[1], test[0], test[1], norm=norm)


# ---------------------------------------------------------------------------------------------------- CIFAR


def _cifar_folder(path: Path, classes: int) -> tuple[Path, bool]:
    """The folder holding the batches and whether they are binary."""
    marker, sub = ("data_batch_1", "cifar-10-batches-") if classes == 10 else ("train", "cifar-100-")
    names = ("py", "bin") if classes == 10 else ("python", "binary")
    for folder in (path, path / f"{sub}{names[0]}", path / f"{sub}{names[1]}"):
        if (folder / marker).is_file():
            return folder, False
        if (folder / f"{marker}.bin").is_file():
            return folder, True
    if not path.is_dir():
        raise DatasetError(f"{path}: not a directory")
    raise DatasetError(
        f"{path}: no CIFAR-{classes} batches ({marker} or {marker}.bin, here or in {sub}{names[0]}/{sub}{names[1]})"
    )


def load_cifar(path: Path, *, classes: int, labels: str = "fine", norm: str = "train") -> Dataset:
    """CIFAR-10 (``classes=10``) or CIFAR-100 (``classes=100``; ``labels="coarse"`` for its 20 superclasses)."""
    if labels not in ("fine", "coarse") or (classes == 10 and labels != "fine"):
        raise DatasetError(
            f"cifar{classes}: labels must be fine{' or coarse' if classes == 100 else ''}, got {labels!r}"
        )
    folder, binary = _cifar_folder(path, classes)
    ext = ".bin" if binary else ""
    if classes == 10:
        train_files: list[Path] = []
        while (folder / f"data_batch_{len(train_files) + 1}{ext}").is_file():
            train_files.append(folder / f"data_batch_{len(train_files) + 1}{ext}")
        test_files = [folder / f"test_batch{ext}"]
    else:
        train_files, test_files = [folder / f"train{ext}"], [folder / f"test{ext}"]

    def read(file: Path) -> tuple[np.ndarray, np.ndarray]:
        if binary:
            coarse = labels == "coarse"
            return formats.read_cifar_binary(
                file, label_bytes=1 if classes == 10 else 2, label_index=0 if classes == 10 or coarse else 1
            )
        key = "labels" if classes == 10 else f"{labels}_labels"
        return formats.read_cifar_python(file, label_key=key)

    count = 20 if labels == "coarse" else classes
    parts = []
    for files in (train_files, test_files):
        xs, ys = zip(*(read(f) for f in files))
        for f, y in zip(files, ys):
            if len(y) and (y.min() < 0 or y.max() >= count):
                raise DatasetError(f"{f}: label {int(y.max())} out of range for {count} classes")
        parts += [np.concatenate(xs), np.concatenate(ys)]
    name = f"cifar{classes}:{path}" + (":labels=coarse" if labels == "coarse" else "")
    return from_arrays(name, *parts, norm=norm, num_classes=count)


# ---------------------------------------------------------------------------------------------------- NPZ, CSV


def load_npz(path: Path, *, norm: str = "train", test: str = "0.2") -> Dataset:
    arrays = formats.read_npz(path)
    if len(arrays) == 2:
        arrays = _split(arrays[0], arrays[1], test, str(path))
    return from_arrays(f"npz:{path}", *arrays, norm=norm)


def load_csv(path: Path, *, label: str | None = None, norm: str = "train", test: str = "0.2") -> Dataset:
    name = f"csv:{path}" + (f":label={label}" if label is not None else "")
    if path.is_dir():
        train, held = path / "train.csv", path / "test.csv"
        if not train.is_file() or not held.is_file():
            raise DatasetError(f"{path}: a CSV folder needs train.csv and test.csv")
        x_train, y_train = formats.read_csv(train, label=label)
        x_test, y_test = formats.read_csv(held, label=label)
        return from_arrays(name, x_train, y_train, x_test, y_test, norm=norm)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    x, y = formats.read_csv(path, label=label)
    return from_arrays(name, *_split(x, y, test, str(path)), norm=norm)


# ---------------------------------------------------------------------------------------------------- import path


def _materialise(data: Any, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (x, y) item of a torch Dataset, stacked."""
    try:
        items = [data[i] for i in range(len(data))]
        return torch.stack([torch.as_tensor(x) for x, _ in items]), torch.as_tensor(
            [int(y) for _, y in items]
        )
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DatasetError(
            f"{where}: cannot read its Dataset items as (features, label) ({exc})".splitlines()[0]
        ) from None


def load_import(spec: str, *, norm: str = "none") -> Dataset:
    try:
        fn = resolve(spec)
    except ImportPathError as exc:
        raise DatasetError(str(exc)) from exc
    if not callable(fn):
        raise DatasetError(f"{spec}: is a {type(fn).__name__}, not a function returning a dataset")
    try:
        data = fn()
    except Exception as exc:  # the user's code: one line here, the traceback with PHALANX_DEBUG=1
        raise DatasetError(f"{spec}: failed: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    return from_python(data, spec, norm=norm)


def from_python(data: Any, name: str, *, norm: str = "none", test: str = "0.2") -> Dataset:
    """A :class:`Dataset` from Python objects: a Dataset; ``(x_train, y_train, x_test, y_test)`` tensors or
    arrays; ``(train, test)`` torch ``Dataset`` objects; or one labelled set, ``(x, y)`` or a single torch
    ``Dataset``, of which a ``test`` fraction is held out by a fixed shuffle."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, torch.utils.data.Dataset):
        data = _materialise(data, name)
    elif (
        isinstance(data, tuple | list)
        and len(data) == 2
        and all(isinstance(d, torch.utils.data.Dataset) for d in data)
    ):
        data = (*_materialise(data[0], name), *_materialise(data[1], name))
    if isinstance(data, tuple | list) and len(data) == 2:
        x, y = (np.asarray(d.detach().cpu() if isinstance(d, torch.Tensor) else d) for d in data)
        data = _split(x, y, test, name)
    if not isinstance(data, tuple | list) or len(data) != 4:
        raise DatasetError(
            f"{name}: returned {type(data).__name__}; expected a phalanx Dataset, (x_train, y_train, x_test, y_test), "
            "(x, y), a torch Dataset or (train Dataset, test Dataset)"
        )
    return from_arrays(name, *data, norm=norm)


# ---------------------------------------------------------------------------------------------------- blobs, specs


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


def split_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """(kind, path or import path, options) of a spec; trailing ``:key=value`` parts are options."""
    parts = spec.split(":")
    options: dict[str, str] = {}
    while len(parts) > 2 and (m := _OPTION.match(parts[-1])):
        options.setdefault(m[1], m[2])
        parts.pop()
    if len(parts) == 2 and (m := _OPTION.match(parts[-1])) and parts[0] in OPTIONS:
        raise DatasetError(f"{spec}: {parts[0]} needs a path before its options")
    head = ":".join(parts)
    kind, _, rest = head.partition(":")
    if kind in OPTIONS and kind != "import":
        allowed = OPTIONS[kind]
        body = rest
    elif is_import_path(head):
        kind, body, allowed = "import", head, OPTIONS["import"]
    else:
        return kind, rest, options
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise DatasetError(
            f"{spec}: unknown option {unknown[0]!r} for {kind} (options: {', '.join(sorted(allowed))})"
        )
    return kind, body, options


@lru_cache(maxsize=8)
def load_dataset(spec: str) -> Dataset:
    """Load a dataset by spec (see the module docstring). Cached: tensors are shared, never mutate them."""
    if spec in ("mnist", "mnist-10k"):
        return load_idx_dir(EMBEDDED_DIR, name="mnist", norm=f"{MNIST_MEAN}/{MNIST_STD}")
    if spec == "blobs":
        return make_blobs()
    kind, body, options = split_spec(spec)
    if kind == "import":
        return load_import(body, **options)
    if kind not in OPTIONS or not body:
        raise DatasetError(f"unknown dataset {spec!r}; choose one of: {', '.join(DATASET_NAMES)}")
    path = Path(body).expanduser()
    if kind == "idx":
        return load_idx_dir(path, name=spec, norm=options.get("norm", "train"))
    if kind in ("cifar10", "cifar100"):
        return load_cifar(path, classes=int(kind[5:]), **options)
    if kind == "npz":
        return load_npz(path, **options)
    return load_csv(path, **options)
