"""A custom tabular model trained from a CSV file (numeric feature columns and a label column):

    phalanx sim --model examples.tabular_csv:tabular_net --dataset csv:data.csv:label=species

Features are standardised per column from the training rows; class names are numbered in sorted order.
``write_synthetic_csv(path)`` writes such a file when you have none.
"""

import numpy as np
from torch import nn


def tabular_net(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(input_shape[0], 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, num_classes)
    )


def write_synthetic_csv(path: str, rows: int = 600, features: int = 6, seed: int = 0) -> None:
    """Three species, each a Gaussian cloud around its own centre, one row per sample."""
    rng = np.random.default_rng(seed)
    names = ["setosa", "versicolor", "virginica"]
    centres = rng.normal(0, 3, (len(names), features))
    labels = rng.integers(0, len(names), rows)
    x = 50 + 10 * (centres[labels] + rng.normal(0, 1, (rows, features)))
    header = ",".join([f"f{i}" for i in range(features)] + ["species"])
    lines = [",".join([*(f"{v:.3f}" for v in row), names[k]]) for row, k in zip(x, labels)]
    with open(path, "w") as f:
        f.write("\n".join([header, *lines]) + "\n")
