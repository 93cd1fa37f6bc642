"""Transfer learning: a model split into a frozen feature part and a trainable head (``--train-only head``).

The head is one submodule (:func:`head_name`): the final ``nn.Linear`` of the built-in models, a user
model's ``head`` attribute, else its last module that holds parameters. With ``train_only = "head"`` the
learner's flat vector holds only the head's parameters (and its buffers under the buffer policy): only the
head is trained, gossiped, aggregated, checkpointed and counted in bytes. The rest of the model, the
*frozen part*, is loaded from a weights file that ``phalanx pretrain`` writes (``--features PATH``), or,
without one, keeps its seeded random initialisation (the random-features baseline: every node with the
same seed has the same frozen part).

The frozen part always runs in eval mode (BatchNorm uses its stored statistics, dropout is off), so it is a
fixed function of the input, and :class:`Transfer` can compute each sample's features once
(:meth:`Transfer.inputs`): training and evaluating a head then costs one small matrix product per batch.
The cache is used only when it is provably equivalent: the head's output must be the model's output
(checked on a probe batch) and the features' shape must differ from the inputs' (so that a raw batch
and a batch of features can never be confused; a raw batch is still accepted and runs the whole model).

The weights file (:func:`write_weights`, :func:`read_weights`) is a format parsed here, never unpickled:
8 magic bytes, a little-endian uint32 header length, a JSON header (provenance, then each tensor's name,
dtype and shape in payload order, and the payload's sha256), then the payload: the tensors' raw
little-endian bytes, one after another; last, the sha256 of everything before it (32 bytes). The payload's
sha256 is the features' identity, which every node logs. Reading checks every length and the hash before it builds a
tensor, so a truncated, corrupt or foreign file is one clear error. (``torch.load(weights_only=True)`` is
safe too, but its zip container is torch's to define; this one is twenty lines to read and audit.)

Disjointness: the file records the samples it was trained on as a ``source`` (``holdout:FRACTION``, a seeded
choice of the training pool, or ``classes:LIST``, every training sample of those classes) plus a fingerprint
of the training pool's labels. Nodes that load it on the same pool leave those samples out of every
shard (:func:`partition_for`), so pretraining and the nodes never share a sample.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from phalanx.node.datasets import Dataset
from phalanx.node.models import MODEL_NAMES

TRAIN_ONLY = ("all", "head")
MAGIC = b"PHXW\x00\x01\r\n"
MAX_HEADER = 1 << 20  # bytes of JSON header a weights file may have
DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "int64": np.dtype("<i8")}
PROBE = 64  # samples of the cache's equivalence check
CHUNK = 1024  # samples per forward pass when computing features


class TransferError(ValueError):
    """A head, features file or pretraining source that cannot be used (one line, naming the file)."""


# ---- which part is the head -----------------------------------------------------------------------------


def head_name(module: nn.Module, model: object) -> str:
    """The dotted name of ``module``'s head: for a built-in model (``model`` one of MODEL_NAMES) its last
    ``nn.Linear``; for any other, its ``head`` submodule if it has one with parameters, else the last
    module (in ``named_modules`` order) that holds parameters of its own. ``""`` is the whole model."""
    modules = list(module.named_modules())
    if isinstance(model, str) and model in MODEL_NAMES:
        linear = [name for name, m in modules if isinstance(m, nn.Linear)]
        if linear:
            return linear[-1]
    head = getattr(module, "head", None)
    if isinstance(head, nn.Module) and any(True for _ in head.parameters()):
        return "head"
    owners = [name for name, m in modules if any(True for _ in m.parameters(recurse=False))]
    if not owners:
        raise TransferError("the model has no parameters, so it has no head to train")
    return owners[-1]


def _under(name: str, head: str) -> bool:
    return head == "" or name == head or name.startswith(head + ".")


def frozen_state(module: nn.Module, head: str) -> dict[str, torch.Tensor]:
    """The frozen part's parameters and persistent buffers (the state dict without the head's entries)."""
    return {k: v for k, v in module.state_dict().items() if not _under(k, head)}


# ---- the weights file -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Weights:
    """A parsed weights file: its tensors (in file order), provenance, and the payload's sha256."""

    tensors: dict[str, torch.Tensor]
    provenance: dict[str, Any]
    sha256: str


def _payload(tensors: Mapping[str, torch.Tensor]) -> tuple[list[dict[str, Any]], bytes]:
    entries, blocks = [], []
    for name, t in tensors.items():
        kind = "float32" if t.is_floating_point() else "int64"
        array = t.detach().cpu().to(torch.float32 if kind == "float32" else torch.int64).numpy()
        entries.append({"name": name, "dtype": kind, "shape": list(array.shape)})
        blocks.append(np.ascontiguousarray(array, dtype=DTYPES[kind]).tobytes())
    return entries, b"".join(blocks)


def payload_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """The sha256 of the tensors as a weights file's payload holds them (the features' identity)."""
    return hashlib.sha256(_payload(tensors)[1]).hexdigest()


def write_weights(path: Path, tensors: Mapping[str, torch.Tensor], provenance: Mapping[str, Any]) -> str:
    """Write ``tensors`` (float32 or int64) with ``provenance`` atomically; returns the payload's sha256."""
    entries, payload = _payload(tensors)
    digest = hashlib.sha256(payload).hexdigest()
    header = json.dumps(
        {"format": 1, "provenance": dict(provenance), "tensors": entries, "sha256": digest}, sort_keys=True
    ).encode()
    tmp = path.with_name(path.name + ".tmp")
    body = MAGIC + struct.pack("<I", len(header)) + header + payload
    with open(tmp, "wb") as fh:
        fh.write(body + hashlib.sha256(body).digest())
    tmp.replace(path)
    return digest


def read_weights(path: Path) -> Weights:
    """Parse a weights file; :class:`TransferError` (one line naming ``path``) if it is not a whole one."""

    def bad(why: str) -> TransferError:
        return TransferError(f"features file {path}: {why}")

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise bad(exc.strerror or type(exc).__name__) from None
    if len(data) < len(MAGIC) + 4 + 32 or not data.startswith(MAGIC):
        raise bad("not a phalanx weights file (written by phalanx pretrain)")
    if hashlib.sha256(memoryview(data)[:-32]).digest() != data[-32:]:
        raise bad("corrupt or truncated (its checksum does not match)")
    data = data[:-32]
    (size,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    if size > MAX_HEADER or start + size > len(data):
        raise bad("truncated or corrupt header")
    try:
        header = json.loads(data[start : start + size])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise bad("corrupt header") from None
    if not isinstance(header, dict) or header.get("format") != 1:
        raise bad("unknown header format")
    entries, provenance, digest = header.get("tensors"), header.get("provenance"), header.get("sha256")
    if not isinstance(entries, list) or not isinstance(provenance, dict) or not isinstance(digest, str):
        raise bad("header lacks tensors, provenance or sha256")
    payload = memoryview(data)[start + size :]
    if hashlib.sha256(payload).hexdigest() != digest:
        raise bad("payload does not match its sha256 (corrupt or truncated)")
    tensors: dict[str, torch.Tensor] = {}
    offset = 0
    for entry in entries:
        if not isinstance(entry, dict):
            raise bad("corrupt tensor entry")
        name, kind, shape = entry.get("name"), entry.get("dtype"), entry.get("shape")
        if (
            not isinstance(name, str)
            or kind not in DTYPES
            or not isinstance(shape, list)
            or not all(type(s) is int and s >= 0 for s in shape)
            or name in tensors
        ):
            raise bad(f"corrupt tensor entry {entry!r}"[:200])
        dtype = DTYPES[kind]
        nbytes = math.prod(shape) * dtype.itemsize
        if offset + nbytes > len(payload):
            raise bad(f"tensor {name} runs past the end of the payload")
        array = np.frombuffer(payload, dtype=dtype, count=math.prod(shape), offset=offset)
        tensors[name] = torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True).reshape(shape))
        offset += nbytes
    if offset != len(payload):
        raise bad(f"{len(payload) - offset} bytes after the last tensor")
    return Weights(tensors=tensors, provenance=provenance, sha256=digest)


# ---- pretraining sources and disjoint shards --------------------------------------------------------------


def parse_source(spec: str) -> tuple[str, Any]:
    """``holdout:FRACTION`` (0 < FRACTION < 1) or ``classes:LIST`` (comma-separated class ids)."""
    kind, _, arg = spec.partition(":")
    if kind == "holdout":
        try:
            fraction = float(arg)
        except ValueError:
            fraction = math.nan
        if not 0 < fraction < 1:
            raise TransferError(f"source holdout needs a fraction in (0, 1), as in holdout:0.1; got {spec!r}")
        return "holdout", fraction
    if kind == "classes":
        parts = [p.strip() for p in arg.split(",")]
        if not arg or not all(p.isdigit() for p in parts) or len(set(parts)) != len(parts):
            raise TransferError(f"source classes needs distinct class ids, as in classes:0,1,2; got {spec!r}")
        return "classes", tuple(sorted(int(p) for p in parts))
    raise TransferError(f"unknown pretraining source {spec!r}; choose holdout:FRACTION or classes:LIST")


def source_indices(labels: np.ndarray, spec: str, *, seed: int) -> np.ndarray:
    """The training-pool samples (sorted indices) that the pretraining source ``spec`` takes."""
    kind, arg = parse_source(spec)
    labels = np.asarray(labels)
    if kind == "holdout":
        k = max(1, round(arg * len(labels)))
        if k >= len(labels):
            raise TransferError(f"holdout:{arg} leaves no training samples for the nodes")
        rng = np.random.default_rng([seed, 0x5EED, 0x7F])
        return np.sort(rng.choice(len(labels), size=k, replace=False)).astype(np.int64)
    classes = np.asarray(arg, dtype=labels.dtype)
    if classes.max(initial=0) >= labels.max(initial=0) + 1:
        raise TransferError(f"source {spec}: the dataset has no class {int(classes.max())}")
    picked = np.flatnonzero(np.isin(labels, classes)).astype(np.int64)
    if len(picked) == len(labels):
        raise TransferError(f"source {spec} takes every training sample; leave some classes for the nodes")
    return picked


def labels_fingerprint(labels: torch.Tensor | np.ndarray) -> str:
    """The sha256 of a training pool's labels (int64, little-endian): which pool a source indexes."""
    array = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    return hashlib.sha256(np.ascontiguousarray(array, dtype="<i8").tobytes()).hexdigest()


def indices_sha256(indices: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(indices, dtype="<i8").tobytes()).hexdigest()


def excluded_indices(provenance: Mapping[str, Any], dataset: Dataset, *, path: str) -> np.ndarray:
    """The samples of ``dataset``'s training pool that the features were pretrained on (none when the file
    was made from another pool). Recomputed from the file's source and seed, checked against its record."""
    p = provenance
    if p.get("train_labels_sha256") != labels_fingerprint(dataset.train_y):
        return np.zeros(0, dtype=np.int64)
    source, seed = p.get("source"), p.get("seed")
    if not isinstance(source, str) or type(seed) is not int:
        raise TransferError(f"features file {path}: provenance lacks its source or seed")
    picked = source_indices(dataset.train_y.numpy(), source, seed=seed)
    if indices_sha256(picked) != p.get("source_sha256"):
        raise TransferError(
            f"features file {path}: its pretraining samples ({source}, seed {seed}) cannot be reproduced "
            "here, so the nodes' data cannot be kept disjoint from them"
        )
    return picked


def partition_for(
    dataset: Dataset, n: int, spec: str, *, seed: int, excluded: np.ndarray | None = None
) -> list[np.ndarray]:
    """The n shards of :func:`phalanx.node.partition.partition` over the training pool without the
    ``excluded`` samples (indices into the whole pool, like every shard)."""
    from phalanx.node.partition import partition

    labels = dataset.train_y.numpy()
    if excluded is None or len(excluded) == 0:
        return partition(labels, n, spec, seed=seed)
    keep = np.setdiff1d(np.arange(len(labels), dtype=np.int64), excluded)
    return [keep[shard] for shard in partition(labels[keep], n, spec, seed=seed)]


# ---- the split model ----------------------------------------------------------------------------------


def _stay_eval(module: nn.Module) -> None:
    """Keep ``module`` in eval mode whatever ``.train()`` its parent is called with."""
    module.eval()

    def train(mode: bool = True) -> nn.Module:
        return nn.Module.train(module, False)

    module.train = train  # type: ignore[method-assign]


class Transfer:
    """A built model split into its frozen part and its head; loads the frozen part and caches features.

    ``head`` is the trainable submodule (its parameters are the learner's vector); ``sha256`` identifies
    the frozen part (the weights file's payload hash, or the hash of the random initialisation);
    ``source`` says where it came from (the file's path, or ``random``).
    """

    def __init__(
        self,
        module: nn.Module,
        model: object,
        *,
        features: str = "",
        input_shape: tuple[int, ...],
    ) -> None:
        self.module = module
        self.head_name = head_name(module, model)
        self.head: nn.Module = module.get_submodule(self.head_name)
        frozen = frozen_state(module, self.head_name)
        self.provenance: dict[str, Any] = {}
        if features:
            weights = read_weights(Path(features))
            check_match(weights, frozen, path=features, model=model)
            module.load_state_dict(weights.tensors, strict=False)
            self.sha256, self.source, self.provenance = weights.sha256, features, weights.provenance
        else:
            self.sha256, self.source = payload_sha256(frozen), "random"
        for name, p in module.named_parameters():
            if not _under(name, self.head_name):
                p.requires_grad_(False)
        ancestors = {self.head_name.rsplit(".", i)[0] for i in range(self.head_name.count(".") + 1)}
        for name, m in module.named_modules():
            if name and not _under(name, self.head_name) and name not in ancestors:
                _stay_eval(m)
        self.input_shape = tuple(input_shape)
        self.feature_shape: tuple[int, ...] | None = self._probe()

    @property
    def cached(self) -> bool:
        """Whether :meth:`inputs` turns samples into features (else it returns them as they are)."""
        return self.feature_shape is not None

    def _captured(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The head's input and the model's output on ``x`` (eval mode, no gradients)."""
        seen: list[Any] = []

        def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
            seen.append(args)

        handle = self.head.register_forward_pre_hook(hook)
        was = self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                out = self.module(x)
        finally:
            handle.remove()
            self.module.train(was)
        if len(seen) != 1 or len(seen[0]) != 1 or not isinstance(seen[0][0], torch.Tensor):
            return None, out
        return seen[0][0], out

    def _probe(self) -> tuple[int, ...] | None:
        """The features' shape when they can stand in for the samples (see the module docstring), else None."""
        if self.head_name == "":
            return None
        gen = torch.Generator().manual_seed(0)
        x = torch.randn((PROBE, *self.input_shape), generator=gen)
        try:
            feats, out = self._captured(x)
            if feats is None or tuple(feats.shape[1:]) == self.input_shape or feats.shape[0] != PROBE:
                return None
            was = self.head.training
            self.head.eval()
            with torch.no_grad():
                again = self.head(feats)
            self.head.train(was)
        except Exception:  # a model that cannot take a random probe batch: no cache, the whole forward pass
            return None
        if again.shape != out.shape or not torch.allclose(again, out, rtol=1e-5, atol=1e-6):
            return None
        return tuple(feats.shape[1:])

    @torch.no_grad()
    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """What the learner should train and evaluate on for samples ``x``: their features when cached."""
        if self.feature_shape is None or tuple(x.shape[1:]) != self.input_shape:
            return x
        chunks = []
        for start in range(0, len(x), CHUNK):
            feats, _ = self._captured(x[start : start + CHUNK])
            assert feats is not None  # the probe saw the head called with one tensor
            chunks.append(feats.detach().clone())
        if not chunks:
            return torch.zeros((0, *self.feature_shape))
        return torch.cat(chunks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output: the head alone on features, the whole model on samples."""
        if self.feature_shape is not None and tuple(x.shape[1:]) == self.feature_shape:
            return self.head(x)  # type: ignore[no-any-return]
        return self.module(x)  # type: ignore[no-any-return]


def check_match(weights: Weights, frozen: Mapping[str, torch.Tensor], *, path: str, model: object) -> None:
    """The file must hold exactly the frozen part's tensors, shape for shape."""
    made_for = weights.provenance.get("model", "?")
    want = {k: tuple(v.shape) for k, v in frozen.items()}
    have = {k: tuple(v.shape) for k, v in weights.tensors.items()}
    if want == have:
        return
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    shaped = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    first = (
        f"lacks {missing[0]}"
        if missing
        else f"has {extra[0]}, which this model has not"
        if extra
        else f"{shaped[0]} is {have[shaped[0]]}, this model's is {want[shaped[0]]}"
    )
    raise TransferError(
        f"features file {path} was made for model {made_for}, not for this {model} model's frozen part "
        f"({first})"
    )


@dataclass(frozen=True, slots=True)
class Features:
    """What a run's nodes use as their frozen part: its hash, where it came from, and the training-pool
    samples it was pretrained on (which every shard leaves out)."""

    sha256: str
    source: str  # the weights file's path, or "random"
    head: str  # the head's dotted name in the model
    dim: int  # the head's parameter count
    excluded: np.ndarray

    def record(self) -> dict[str, Any]:
        """For logs and run summaries."""
        return {
            "features": self.source,
            "features_sha256": self.sha256,
            "head": self.head,
            "head_params": self.dim,
            "excluded_samples": len(self.excluded),
        }


def check_features(settings: Any, dataset: Dataset) -> Features | None:
    """Check a run's transfer settings (``train_only``, ``features``, ``model``, ``seed`` of a node's or a
    simulation's config) before anything trains: the file parses, fits the model, and its pretraining
    samples are known. None under ``train_only = "all"``."""
    from phalanx.node.models import build_model

    train_only, features = settings.train_only, str(settings.features or "")
    if train_only not in TRAIN_ONLY:
        raise TransferError(f"train-only must be all or head, got {train_only!r}")
    if train_only == "all":
        if features:
            raise TransferError("--features is the frozen part of --train-only head; add --train-only head")
        return None
    torch.manual_seed(settings.seed)  # as the learner builds it, so a random frozen part hashes the same
    module = build_model(settings.model, dataset.feature_shape, dataset.num_classes, seed=0)
    transfer = Transfer(module, settings.model, features=features, input_shape=dataset.feature_shape)
    excluded = np.zeros(0, dtype=np.int64)
    if features:
        excluded = excluded_indices(transfer.provenance, dataset, path=features)
    return Features(
        sha256=transfer.sha256,
        source=transfer.source,
        head=transfer.head_name,
        dim=sum(p.numel() for p in transfer.head.parameters()),
        excluded=excluded,
    )


def linear_heads_per_class(
    vectors: torch.Tensor, head: nn.Linear, x: torch.Tensor, y: torch.Tensor, num_classes: int
) -> list[tuple[float, float, tuple[float, ...]]]:
    """Accuracy, mean loss and per-class accuracy of k linear heads at once: ``vectors`` is (k, dim), each
    row a head's flat parameters (weight, then bias, as the learner lays them out), ``x`` features (n, F).
    One batched product instead of k forward passes (what Bristle's integrator needs per round)."""
    k, n = vectors.shape[0], len(y)
    out_f, in_f = head.out_features, head.in_features
    if n == 0:
        return [(math.nan, math.nan, tuple(math.nan for _ in range(num_classes)))] * k
    weights = vectors[:, : out_f * in_f].reshape(k * out_f, in_f)
    # one (n, F) x (F, k*C) product, then (k, n, C)
    logits = (x @ weights.T).reshape(n, k, out_f).transpose(0, 1)
    if head.bias is not None:
        logits = logits + vectors[:, out_f * in_f : out_f * (in_f + 1)].unsqueeze(1)
    # cross-entropy as logsumexp - picked logit: log_softmax over a (k, n, C) stack is several times slower
    losses = torch.logsumexp(logits, 2) - logits.gather(2, y.expand(k, n).unsqueeze(2)).squeeze(2)
    hit = (logits.max(dim=2).indices == y).to(torch.float64)  # (k, n); the first maximum, as argmax
    onehot = nn.functional.one_hot(y, num_classes).to(torch.float64)  # (n, C)
    correct = (hit @ onehot).tolist()
    counts = onehot.sum(0).tolist()
    accs, mean_losses = hit.mean(1).tolist(), losses.mean(1).tolist()
    return [
        (
            accs[i],
            mean_losses[i],
            tuple(c / m if m > 0 else math.nan for c, m in zip(correct[i], counts)),
        )
        for i in range(k)
    ]
