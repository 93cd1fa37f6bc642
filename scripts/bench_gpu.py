"""Simulator and aggregation throughput on the CPU and on CUDA, side by side.

    .venv/bin/python scripts/bench_gpu.py                      # the defaults below
    .venv/bin/python scripts/bench_gpu.py --nodes 64 --models mlp --cpu-rounds 1

Simulator: simulated node-steps per second (one local step per node and round, batch ``--batch-size``,
D-PSGD with mean mixing on a random 8-regular graph, evaluation once on 2 nodes and 256 test samples) for
the MLP (784-64-10, MNIST-shaped) and ResNet-8 (examples/resnet8.py, CIFAR-shaped), at each ``--nodes``.
The data are random tensors of those shapes (throughput does not depend on the values), enough for every
node to hold ``--batch-size`` samples. Every simulated node's model, optimiser state and data live on the
run's device (``device = "cuda"``), the one shared module too, and aggregation runs there.

Aggregation: calls per second of a few rules on an (n, d) standard-normal float32 stack on each device
(median of ``--repeat`` timed calls after a warm-up; CUDA calls synchronised).

On the CPU each run is short (``--cpu-rounds``, 1 by default; the first round's set-up is included in
both columns alike, as in every simulated run); on CUDA ``--rounds``. Without CUDA the CUDA column reads
``absent`` and the script says so.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples.resnet8, from any directory

from phalanx.aggregation import aggregate
from phalanx.api import execute, prepare
from phalanx.sim.report import table

SHAPES = {"mlp": (1, 28, 28), "resnet8": (3, 32, 32)}
RULES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("mean", {}),
    ("trimmed-mean", {"f": 2}),
    ("median", {}),
    ("krum", {"f": 2}),
    ("centered-clipping", {"tau": 1.0}),
)


def synthetic(shape: tuple[int, ...], train: int, test: int = 256) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(train + test, *shape, generator=g)
    y = torch.randint(0, 10, (train + test,), generator=g)
    return x[:train], y[:train], x[train:], y[train:]


def node_steps_per_second(model: str, nodes: int, device: str, rounds: int, batch: int) -> float:
    from examples.resnet8 import resnet8

    data = synthetic(SHAPES[model], nodes * batch)
    checked = prepare(
        model="mlp" if model == "mlp" else resnet8,
        dataset=data,
        nodes=nodes,
        rounds=rounds,
        topology="regular:8",
        batch_size=batch,
        eval_every=rounds,
        eval_nodes=2,
        eval_samples=256,
        device=device,
        threads=1,
    )
    start = time.perf_counter()
    result = execute(checked)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    return float(result.summary["train_steps"]) / wall


def rule_calls_per_second(
    rule: str, params: dict[str, Any], n: int, d: int, device: str, repeat: int
) -> float:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0)).to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    aggregate(rule, x, **params)  # warm-up
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        aggregate(rule, x, **params)
        sync()
        times.append(time.perf_counter() - start)
    return 1.0 / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[64, 1000])
    parser.add_argument("--models", nargs="+", default=["mlp", "resnet8"], choices=sorted(SHAPES))
    parser.add_argument("--rounds", type=int, default=5, help="rounds of a CUDA run")
    parser.add_argument("--cpu-rounds", type=int, default=1, help="rounds of a CPU run (keep it short)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--n", type=int, default=32, help="rows of the aggregation stack")
    parser.add_argument("--d", type=int, default=1_000_000, help="columns of the aggregation stack")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-sim", action="store_true", help="aggregation only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cuda = torch.cuda.is_available()
    print(
        f"torch {torch.__version__}; CUDA: {torch.cuda.get_device_name(0) if cuda else 'absent'}", flush=True
    )

    def both(measure: Any) -> dict[str, Any]:
        cpu = measure("cpu")
        gpu = measure("cuda") if cuda else None
        return {"cpu": cpu, "cuda": gpu, "speedup": gpu / cpu if gpu else None}

    rows = []
    if not args.no_sim:
        for model in args.models:
            for nodes in args.nodes:
                row = both(
                    lambda dev, m=model, k=nodes: node_steps_per_second(
                        m, k, dev, args.cpu_rounds if dev == "cpu" else args.rounds, args.batch_size
                    )
                )
                rows.append({"what": f"sim {model}, {nodes} nodes", **row})
                print(rows[-1], flush=True)
    for rule, params in RULES:
        row = both(
            lambda dev, r=rule, p=params: rule_calls_per_second(r, p, args.n, args.d, dev, args.repeat)
        )
        rows.append({"what": f"aggregate {rule} (n={args.n}, d={args.d:,})", **row})
        print(rows[-1], flush=True)
    print()
    print(
        table(
            rows,
            (
                ("what", "measure (sim: node-steps/s; aggregate: calls/s)", ""),
                ("cpu", "CPU (1 thread)", ".1f"),
                ("cuda", "CUDA" if cuda else "CUDA (absent)", ".1f"),
                ("speedup", "CUDA/CPU", ".1f"),
            ),
        )
    )
    if not cuda:
        print("\nCUDA is absent on this machine: only the CPU column was measured.")


if __name__ == "__main__":
    main()
