"""The models a node trains: logistic regression, an MLP (784-64-10 by default), a LeNet-style CNN, and
``cnn-dropout``: the network of PyTorch's MNIST example (two 3x3 convolutions, channel dropout 0.25, a
9,216-128 layer, dropout 0.5; 1.2M parameters on MNIST), the model ClippedGossip's experiments trained."""

from __future__ import annotations

import math

import torch
from torch import nn

MODEL_NAMES = ("logreg", "mlp", "cnn", "cnn-dropout")


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


def build_model(
    name: str, feature_shape: tuple[int, ...], num_classes: int, *, hidden: int = 64, seed: int = 0
) -> nn.Module:
    """Build a freshly initialised model for inputs of ``feature_shape`` (without the batch dimension);
    ``seed`` seeds the dropout masks of the models that have dropout."""
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
    raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
