"""Head-only training (``--train-only head``) vs whole-model training, side by side, in one process.

    .venv/bin/python scripts/bench_transfer.py --models mlp cnn --nodes 64 --rounds 10

For each model on the embedded MNIST, with ``train_only = all`` and ``head``:

- ``dim``: the model vector's length (what every message carries);
- ``setup s``: building the simulated run's trainer and worker (for ``head``: the features of every training
  sample and of the evaluated test samples, computed once);
- ``step us``: one local SGD step of batch 32 (median of ``--steps`` steps of one node);
- ``eval 10 heads us``: evaluating 10 candidate vectors on 200 of a node's own samples, per class (what
  Bristle's integrator does each round), one after the other (``SimWorker.evaluate``) and ``batched``
  (``SimWorker.evaluate_many``: one product for linear heads on cached features), each with its ratio to
  one step;
- ``round ms``: the wall time of one simulated D-PSGD round of ``--nodes`` nodes (random 8-regular graph,
  mean, one local step, evaluation on 8 nodes and 500 test images at the last round only), timed from the
  end of the first round to the end of the last (so without the run's set-up), and the megabytes sent per
  round.

The head-only runs use the model's seeded random frozen part (no ``--features`` file): its speed is the
same as a pretrained one's. Ratios are whole / head, measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from phalanx.node.learner import BatchSampler, TrainConfig, Trainer, derive_seed
from phalanx.sim.config import SimConfig
from phalanx.sim.experiment import plan, run
from phalanx.sim.report import table
from phalanx.sim.training import SimWorker


def measure(model: str, train_only: str, nodes: int, rounds: int, steps: int) -> dict[str, object]:
    config = SimConfig(
        name=f"bench-{model}-{train_only}",
        nodes=nodes,
        rounds=rounds,
        topology="regular:8",
        dataset="mnist",
        model=model,
        train_only=train_only,
        eval_every=rounds,
        eval_nodes=8,
        eval_samples=500,
    )
    p = plan(config)
    start = time.perf_counter()
    trainer = Trainer(config.model, p.dataset, TrainConfig.from_settings(config), init_seed=config.seed)
    worker = SimWorker(trainer, p.dataset, p.shards, seed=config.seed, step_time=config.step_time)
    trainer.inputs(p.dataset.test_x[: config.eval_samples])  # the run's test features, as run() makes them
    setup = time.perf_counter() - start
    x, y, sampler = worker.data["0"]
    state = trainer.new_state()
    local = BatchSampler(sampler.size, trainer.config.batch_size, derive_seed(0, "bench"))
    xs, ys = x.index_select(0, torch.from_numpy(sampler.shard)), y[torch.from_numpy(sampler.shard)]
    trainer.train(state, xs, ys, local, 20)  # warm up
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        trainer.train(state, xs, ys, local, 1)
        times.append(time.perf_counter() - t)
    step = statistics.median(times)
    candidates = [state.params + 0.01 * torch.randn(trainer.dim) for _ in range(10)]
    evals = []
    for _ in range(max(3, steps // 20)):
        t = time.perf_counter()
        for c in candidates:
            worker.evaluate("0", c, 200)
        evals.append(time.perf_counter() - t)
    evaluate = statistics.median(evals)
    batched = []
    for _ in range(max(3, steps // 20)):
        t = time.perf_counter()
        worker.evaluate_many("0", candidates, 200)
        batched.append(time.perf_counter() - t)
    together = statistics.median(batched)
    stamps: list[float] = []
    result = run(p, progress=lambda row: stamps.append(time.perf_counter()))
    wall = stamps[-1] - stamps[0]  # rounds 2..R: no set-up; the one evaluation, on 8 nodes, is in round R
    return {
        "model": model,
        "train_only": train_only,
        "dim": trainer.dim,
        "setup": setup,
        "step_us": step * 1e6,
        "eval_us": evaluate * 1e6,
        "eval_ratio": evaluate / step,
        "batched_us": together * 1e6,
        "batched_ratio": together / step,
        "round_ms": wall / (rounds - 1) * 1e3,
        "mb_round": result.rows[-1]["bytes"] / rounds / 1e6,
        "acc": result.rows[-1].get("acc_mean"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"])
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=200, help="local steps timed per configuration")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for model in args.models:
        pair = [measure(model, only, args.nodes, args.rounds, args.steps) for only in ("all", "head")]
        whole, head = pair
        head["speedup"] = (
            f"step {whole['step_us'] / head['step_us']:.1f}x, round {whole['round_ms'] / head['round_ms']:.1f}x"  # type: ignore[operator]
        )
        rows += pair
        print(f"{model}: done", flush=True)
    print(
        table(
            rows,
            (
                ("model", "model", ""),
                ("train_only", "train-only", ""),
                ("dim", "dim", ""),
                ("setup", "setup s", ".2f"),
                ("step_us", "step us", ".0f"),
                ("eval_us", "eval 10 heads us", ".0f"),
                ("eval_ratio", "/step", ".2f"),
                ("batched_us", "batched us", ".0f"),
                ("batched_ratio", "/step", ".2f"),
                ("round_ms", f"round ms ({args.nodes} nodes)", ".1f"),
                ("mb_round", "MB/round", ".3f"),
                ("speedup", "whole/head", ""),
            ),
        )
    )


if __name__ == "__main__":
    main()
