"""The models a node trains: logistic regression, an MLP (784-64-10 by default) and a LeNet-style CNN."""

from __future__ import annotations

import math

from torch import nn

MODEL_NAMES = ("logreg", "mlp", "cnn")


class ModelError(ValueError):
    """A model name or shape that cannot be built."""


def build_model(
    name: str, feature_shape: tuple[int, ...], num_classes: int, *, hidden: int = 64
) -> nn.Module:
    """Build a freshly initialised model for inputs of ``feature_shape`` (without the batch dimension)."""
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
    raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
