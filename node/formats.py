"""Readers of dataset files on the local disk: IDX of any shape, CIFAR-10/100 (python and binary batches), NPZ, CSV.

Each reader returns numpy arrays (features as stored, labels as stored) and raises :class:`DatasetError`
with one line naming the file and the problem; :mod:`phalanx.node.datasets` turns the arrays into tensors.

Nothing is downloaded. The CIFAR python batches are pickles, so they are read only from the local path the
user names, through :class:`BatchUnpickler`: it rebuilds dicts, lists, strings, bytes, numbers and numpy
arrays, and refuses every other global a pickle may name (so a doctored file cannot run code). NPZ files are
read with ``allow_pickle=False``.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import pickle
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

CIFAR_SIDE = 32
CIFAR_PIXELS = 3 * CIFAR_SIDE * CIFAR_SIDE
# IDX element types (the third magic byte) and their big-endian numpy dtypes.
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049


class DatasetError(ValueError):
    """A dataset spec or file that cannot be used."""


def read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when its name ends in ``.gz``."""
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


# ---------------------------------------------------------------------------------------------------- IDX


def read_idx(path: Path, *, kind: Literal["images", "labels"]) -> np.ndarray:
    """Read an IDX file: a big-endian magic (0, 0, element type, number of dimensions), one big-endian
    uint32 per dimension, then the elements. Images may have any shape of two or more dimensions
    (N x H x W, N x H x W x C, ...) and any IDX element type; labels are one-dimensional unsigned bytes.
    """
    data = read_bytes(path)
    if len(data) < 8:
        raise DatasetError(f"{path}: truncated IDX header ({len(data)} bytes)")
    found = int.from_bytes(data[:4], "big")
    ndim, code = data[3], data[2]
    valid = data[:2] == b"\0\0" and code in IDX_TYPES
    if kind == "labels" and found != LABEL_MAGIC:
        raise DatasetError(
            f"{path}: wrong IDX magic {found}, expected {LABEL_MAGIC} (uint8 labels, 1 dimension)"
        )
    if kind == "images" and (not valid or ndim < 2):
        raise DatasetError(
            f"{path}: wrong IDX magic {found}, expected {IMAGE_MAGIC} (uint8 N x H x W), "
            f"{IMAGE_MAGIC + 1} (uint8 N x H x W x C) or another IDX element type with 2+ dimensions"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_TYPES[code])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetError(
            f"{path}: IDX body holds {len(data) - header} bytes, header {dims} needs {expected} (truncated?)"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


# ---------------------------------------------------------------------------------------------------- CIFAR


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 pickles of protocol 2 spell a bytes object as _codecs.encode(str, "latin1"); nothing else.
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError("_codecs.encode is allowed only as the latin-1 spelling of bytes")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Callable[..., Any]]:
    # numpy's array-rebuilding function, wherever this numpy keeps it
    reconstruct: Callable[..., Any] = np.ndarray.__reduce__(np.zeros(1))[0]  # type: ignore[assignment]
    allowed: dict[tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    # The files name the function by the module path of the numpy that wrote them (numpy.core before 2.0).
    # Protocol 5 (a batch re-pickled by Python 3.8+) rebuilds arrays from their raw buffer instead.
    frombuffer: Callable[..., Any] = np.zeros(1).__reduce_ex__(5)[0]  # type: ignore[assignment]
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    return allowed


class BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch and nothing else: the built-in containers and scalars the pickle opcodes make
    themselves, plus numpy array reconstruction; any other global is refused."""

    _ALLOWED = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self._ALLOWED.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused persistent id")


def _key(batch: dict[Any, Any], name: str) -> Any:
    for key in (name.encode(), name):
        if key in batch:
            return batch[key]
    return None


def read_cifar_python(path: Path, *, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch (a pickled dict with ``data``: N x 3072 uint8 and ``label_key``: N ints) as
    (N x 3 x 32 x 32 uint8, N int64)."""
    data = read_bytes(path)
    try:
        batch = BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise DatasetError(f"{path}: not a CIFAR python batch ({exc})".splitlines()[0]) from None
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: not a CIFAR python batch (holds {type(batch).__name__}, not a dict)")
    x, y = _key(batch, "data"), _key(batch, label_key)
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != CIFAR_PIXELS:
        raise DatasetError(f"{path}: CIFAR batch has no uint8 'data' array of N x {CIFAR_PIXELS}")
    if not isinstance(y, list | np.ndarray) or len(y) != len(x):
        raise DatasetError(f"{path}: CIFAR batch has no '{label_key}' list of {len(x)} labels")
    try:
        labels = np.asarray(y, dtype=np.int64)
    except (TypeError, ValueError):
        raise DatasetError(f"{path}: CIFAR batch labels are not integers") from None
    return x.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE), labels


def read_cifar_binary(path: Path, *, label_bytes: int, label_index: int) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR binary batch: records of ``label_bytes`` label bytes then 3072 pixel bytes (R, G, B planes);
    the label is byte ``label_index`` of the record (CIFAR-100: 0 coarse, 1 fine)."""
    data = read_bytes(path)
    record = label_bytes + CIFAR_PIXELS
    if not data or len(data) % record:
        raise DatasetError(f"{path}: {len(data)} bytes is not a whole number of {record}-byte CIFAR records")
    rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    x = rows[:, label_bytes:].reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE)
    return x, rows[:, label_index].astype(np.int64)


# ---------------------------------------------------------------------------------------------------- NPZ

NPZ_KEYS = (("x_train", "y_train", "x_test", "y_test"), ("train_x", "train_y", "test_x", "test_y"))


def read_npz(path: Path) -> tuple[np.ndarray, ...]:
    """The arrays of an NPZ file: (x_train, y_train, x_test, y_test) under those names or as
    train_x/train_y/test_x/test_y, or (x, y) when it holds one labelled set. Never unpickles."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = set(archive.files)
            for keys in NPZ_KEYS:
                if set(keys) <= names:
                    return tuple(archive[k] for k in keys)
            if {"x", "y"} <= names:
                return archive["x"], archive["y"]
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except (OSError, ValueError, zlib.error, EOFError) as exc:
        raise DatasetError(f"{path}: not a readable NPZ file ({exc})".splitlines()[0]) from None
    raise DatasetError(
        f"{path}: NPZ holds {sorted(names)}; expected x_train, y_train, x_test, y_test "
        "(or train_x, train_y, test_x, test_y, or x, y)"
    )


# ---------------------------------------------------------------------------------------------------- CSV

LABEL_COLUMNS = ("label", "target", "class", "y")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_csv(path: Path, *, label: str | None) -> tuple[np.ndarray, np.ndarray]:
    """A CSV file as (float64 features N x F, labels N as strings). The first row is a header when any of
    its cells is not a number. ``label`` names the label column (a header name, or a 0-based index; negative
    counts from the end); by default a column named label/target/class/y, else the last column."""
    try:
        text = read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8 text") from None
    rows = [row for row in csv.reader(io.StringIO(text)) if row and any(cell.strip() for cell in row)]
    if not rows:
        raise DatasetError(f"{path}: empty CSV file")
    header = [c.strip() for c in rows[0]] if not all(_is_number(c) for c in rows[0]) else None
    body = rows[1:] if header else rows
    width = len(rows[0])
    if width < 2:
        raise DatasetError(f"{path}: a CSV needs a label column and at least one feature column")
    names = header or [str(i) for i in range(width)]
    if label is None:
        column = next((names.index(n) for n in LABEL_COLUMNS if header and n in names), width - 1)
    elif header and label in names:
        column = names.index(label)
    elif label.lstrip("-").isdigit() and -width <= int(label) < width:
        column = int(label) % width
    else:
        raise DatasetError(f"{path}: no label column {label!r} (columns: {', '.join(names)})")
    features = np.empty((len(body), width - 1), dtype=np.float64)
    labels = []
    keep = [c for c in range(width) if c != column]
    for r, row in enumerate(body):
        line = r + (2 if header else 1)
        if len(row) != width:
            raise DatasetError(f"{path}: line {line} has {len(row)} fields, the first row has {width}")
        labels.append(row[column].strip())
        for j, c in enumerate(keep):
            try:
                features[r, j] = float(row[c])
            except ValueError:
                raise DatasetError(
                    f"{path}: line {line}, column {names[c]!r}: {row[c]!r} is not a number"
                ) from None
    if not body:
        raise DatasetError(f"{path}: no data rows")
    return features, np.asarray(labels)
