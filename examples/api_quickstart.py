"""The Python API in one script: your own model, data and loss, 16 simulated nodes (python examples/api_quickstart.py [OUT])."""

import sys

import torch
from torch import nn

import phalanx


class TinyNet(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(input_shape[0], 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def two_moons_ish(n: int = 2000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Four classes: the quadrant of a noisy 2-D point, padded with 6 noise features."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() * 2 + (x[:, 1] > 0).long()
    return x, y


if __name__ == "__main__":
    result = phalanx.simulate(
        model=TinyNet,                      # any nn.Module factory (class or function)
        dataset=two_moons_ish(),            # (x, y) tensors: 20% held out for testing
        loss_fn=nn.CrossEntropyLoss(label_smoothing=0.05),
        nodes=16, rounds=20, topology="regular:4", local_steps=2,
        optimizer="adamw", lr=0.01, weight_decay=1e-4, sam_rho=0.02,  # SAM around AdamW
        buffers="local", device="auto", seed=0, threads=1,
        out=sys.argv[1] if len(sys.argv) > 1 else None, overwrite=True,
    )  # fmt: skip
    print(f"final accuracy {result.final_accuracy:.3f}; per evaluation round: {result.accuracy}")
    print(f"wrote {result.out}" if result.out else "(pass a folder to write the run)")
