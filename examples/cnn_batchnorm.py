"""A custom CNN with BatchNorm on CIFAR-shaped data (3 x 32 x 32, 10 classes), from the repository root:

    phalanx sim --model examples.cnn_batchnorm:SmallCNN --dataset cifar10:~/data/cifar-10-batches-py
    phalanx sim --model examples.cnn_batchnorm:SmallCNN --dataset examples.cnn_batchnorm:synthetic

The running statistics travel with the weights (``buffers = "local"`` in a config keeps them per node).
"""

import torch
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, input_shape: tuple[int, ...] = (3, 32, 32), num_classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(input_shape[0], 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
            nn.Flatten(), nn.Linear(32, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def synthetic(n: int = 1200, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """CIFAR-shaped images: per class a coarse 4 x 4 colour layout, under as much noise; 5/6 train, 1/6 test."""
    g = torch.Generator().manual_seed(seed)
    layouts = torch.randn(classes, 3, 4, 4, generator=g).repeat_interleave(8, 2).repeat_interleave(8, 3)
    y = torch.randint(0, classes, (n,), generator=g)
    x = layouts[y] + torch.randn(n, 3, 32, 32, generator=g)
    cut = n * 5 // 6
    return x[:cut], y[:cut], x[cut:], y[cut:]
