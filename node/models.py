"""The models a node trains: logistic regression, an MLP (784-64-10 by default), a LeNet-style CNN,
``cnn-dropout`` (the network of PyTorch's MNIST example: two 3x3 convolutions, channel dropout 0.25, a
9,216-128 layer, dropout 0.5; 1.2M parameters on MNIST, the model ClippedGossip's experiments trained), and
any user model by import path.

A model spec ``module:attr`` (``mypkg.models:resnet8``) names a factory: a function or an ``nn.Module``
class. It is called with the keywords it declares among ``input_shape`` (also spelled ``feature_shape``
or ``in_shape``: the shape of one sample, e.g. ``(3, 32, 32)``), ``num_classes`` (or ``classes``,
``n_classes``) and ``seed``; a factory that takes ``**kwargs`` gets ``input_shape`` and ``num_classes``.
It must return an ``nn.Module`` whose parameters are float32.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from phalanx.node.imports import ImportPathError, is_import_path, resolve

MODEL_NAMES = ("logreg", "mlp", "cnn", "cnn-dropout")
SHAPE_NAMES = ("input_shape", "feature_shape", "in_shape")
CLASS_NAMES = ("num_classes", "classes", "n_classes")


class ModelError(ValueError):
    """A model name or shape that cannot be built."""


class SeededDropout(nn.Module):
    """Dropout that draws its masks from its own generator, not torch's global one, so that a simulation
    stays reproducible whatever else runs in the process. ``channels`` drops whole feature maps of an
    (N, C, H, W) input (``nn.Dropout2d``); otherwise single values. Inactive in ``eval()`` mode."""

    def __init__(self, p: float, generator: torch.Generator, *, channels: bool = False) -> None:
        super().__init__()
        if not 0 <= p < 1:
            raise ModelError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.generator = generator
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        shape = (*x.shape[:2], *([1] * (x.dim() - 2))) if self.channels else x.shape
        keep = torch.empty(shape, dtype=x.dtype).bernoulli_(1 - self.p, generator=self.generator)
        return x * keep.div_(1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, channels={self.channels}"


def resolve_factory(spec: str) -> Callable[..., Any]:
    """The factory a ``module:attr`` model spec names; :class:`ModelError` (one line) if it does not resolve."""
    try:
        factory = resolve(spec)
    except ImportPathError as exc:
        raise ModelError(str(exc)) from exc
    if not callable(factory):
        raise ModelError(f"{spec}: is a {type(factory).__name__}, not a model factory")
    return factory  # type: ignore[no-any-return]


def check_model(name: str) -> None:
    """Refuse a model spec that names neither a built-in model nor a resolvable factory (before any data loads)."""
    if name in MODEL_NAMES:
        return
    if not is_import_path(name):
        raise ModelError(
            f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}, or a factory as module:attr"
        )
    resolve_factory(name)


def call_factory(
    factory: Callable[..., Any], feature_shape: tuple[int, ...], num_classes: int, *, seed: int, name: str
) -> nn.Module:
    """Call a user factory with the keywords it declares (see the module docstring); check it made a module."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    offered = {"seed": seed}
    offered.update(dict.fromkeys(SHAPE_NAMES, tuple(feature_shape)))  # type: ignore[arg-type]
    offered.update(dict.fromkeys(CLASS_NAMES, num_classes))
    kwargs: dict[str, Any] = {}
    for key, p in params.items():
        if p.kind is p.VAR_KEYWORD:
            kwargs.setdefault("input_shape", tuple(feature_shape))
            kwargs.setdefault("num_classes", num_classes)
        elif key in offered and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
            kwargs[key] = offered[key]
        elif p.default is p.empty and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD, p.POSITIONAL_ONLY):
            raise ModelError(
                f"{name}: cannot fill its required argument {key!r} "
                f"(a factory may take {', '.join((*SHAPE_NAMES, *CLASS_NAMES, 'seed'))})"
            )
    try:
        module = factory(**kwargs)
    except Exception as exc:
        raise ModelError(
            f"{name}: building the model failed: {type(exc).__name__}: {exc}".splitlines()[0]
        ) from exc  # the user's code: one line here, the traceback with PHALANX_DEBUG=1
    if not isinstance(module, nn.Module):
        raise ModelError(f"{name}: returned a {type(module).__name__}, not an nn.Module")
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in module.parameters()):
        # Lazy layers (nn.LazyLinear, ...) take their shapes from a first forward pass; eval mode so that it
        # moves no running statistics.
        module.eval()
        try:
            with torch.no_grad():
                module(torch.zeros(1, *feature_shape))
        except Exception as exc:
            raise ModelError(
                f"{name}: a first forward pass on {tuple(feature_shape)} failed: {exc}".splitlines()[0]
            ) from None
        module.train()
    return module


def build_model(
    name: str | Callable[..., Any],
    feature_shape: tuple[int, ...],
    num_classes: int,
    *,
    hidden: int = 64,
    seed: int = 0,
) -> nn.Module:
    """Build a freshly initialised model for inputs of ``feature_shape`` (without the batch dimension);
    ``seed`` seeds the dropout masks of the models that have dropout. ``name`` is a built-in name, a
    ``module:attr`` factory spec, or a factory itself."""
    if callable(name):
        label = getattr(name, "__qualname__", type(name).__name__)
        return call_factory(name, feature_shape, num_classes, seed=seed, name=label)
    if name not in MODEL_NAMES and is_import_path(name):
        return call_factory(resolve_factory(name), feature_shape, num_classes, seed=seed, name=name)
    features = math.prod(feature_shape)
    if name == "logreg":
        return nn.Sequential(nn.Flatten(), nn.Linear(features, num_classes))
    if name == "mlp":
        return nn.Sequential(
            nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )
    if name == "cnn":
        if len(feature_shape) != 3 or feature_shape[1] < 12 or feature_shape[2] < 12:
            raise ModelError(f"cnn needs image inputs (C, H, W) of at least 12x12, got {feature_shape}")
        channels, height, width = feature_shape
        flat = 16 * ((height // 2 - 4) // 2) * ((width // 2 - 4) // 2)
        return nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(flat, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )
    if name == "cnn-dropout":
        if len(feature_shape) != 3 or feature_shape[1] < 6 or feature_shape[2] < 6:
            raise ModelError(f"cnn-dropout needs image inputs (C, H, W) of at least 6x6, got {feature_shape}")
        channels, height, width = feature_shape
        masks = torch.Generator().manual_seed(seed)
        # As in the example: no activation between the second convolution and the pooling.
        return nn.Sequential(
            nn.Conv2d(channels, 32, 3),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3),
            nn.MaxPool2d(2),
            SeededDropout(0.25, masks, channels=True),
            nn.Flatten(),
            nn.Linear(64 * ((height - 4) // 2) * ((width - 4) // 2), 128),
            nn.ReLU(),
            SeededDropout(0.5, masks),
            nn.Linear(128, num_classes),
        )
    raise ModelError(
        f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}, or a factory as module:attr"
    )
