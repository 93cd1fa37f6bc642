"""Simulator overhead: wall time of a simulated run vs the pure local training of the same nodes and steps.

    .venv/bin/python scripts/bench_sim.py --nodes 64 1000 --rounds 20

For each size it runs D-PSGD (MLP on the embedded MNIST, one local step per round, random 8-regular
graph, trimmed mean with f=1 by default) through the full simulator, then replays exactly the same
training steps (same nodes, same batches, one shared Trainer, every node training its own model: local
SGD without gossip) with nothing else, and prints
``overhead = simulated wall time / pure training time`` (the median over ``--repeat`` alternated pairs,
with the smallest and largest pair) and the process's peak memory during the first simulation. Evaluation is
limited to the first and last round on 8 nodes and 500 test images so that it does not dominate.

``--breakdown`` also attributes the overhead, per node and round: ``--repeat`` more pairs of runs in which
the local steps (on both sides), the aggregation, the consensus and round bookkeeping of the metrics, and the
evaluation are each timed where they run; what remains of the simulated wall time is the engine, the
protocol handlers and the set-up. The wrappers add about a microsecond per node and round to the timed runs.
For comparison it also times the engine, protocol and set-up alone: a run whose steps return their input,
whose nodes keep their own vector and whose metrics ignore the rounds.

``--custom`` instead prices bringing your own model: the same MLP (784-64-10) simulated three ways after a
warm-up run of each, ``--repeat`` times in rotating order; the wall time of each (median, best) and the median
over repeats of its ratio to the built-in run of the same repeat:

    .venv/bin/python scripts/bench_sim.py --custom --nodes 64 1000 --rounds 10 --repeat 5

``built-in`` is ``model = "mlp"``; ``import path`` is ``model = "bench_sim:same_mlp"`` (the factory below, as
``--model`` resolves it); ``API object`` passes that factory in memory to :func:`phalanx.api.prepare`. The three
train bit-identical models (checked).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from contextlib import ExitStack
from unittest import mock

import torch

from phalanx.gossip.aggregator import Combiner
from phalanx.node.learner import TrainConfig, Trainer
from phalanx.sim.config import SimConfig
from phalanx.sim.engine import Engine
from phalanx.sim.experiment import plan, run
from phalanx.sim.metrics import Metrics
from phalanx.sim.report import table
from phalanx.sim.training import SimWorker


def pure_training(config: SimConfig, p, rounds: int) -> float:
    trainer = Trainer(config.model, p.dataset, TrainConfig.from_settings(config), init_seed=config.seed)
    worker = SimWorker(trainer, p.dataset, p.shards, seed=config.seed, step_time=config.step_time)
    # Every node keeps its own model from step to step (local SGD without gossip), as in the simulation:
    # one shared vector for all nodes would stay in cache, which the simulated nodes' models cannot.
    params = {str(i): trainer.initial.clone() for i in range(config.nodes)}
    start = time.perf_counter()
    for r in range(rounds):
        for i in range(config.nodes):
            node = str(i)
            params[node], _ = worker.train(node, r, params[node], config.local_steps)
    return time.perf_counter() - start


#: What ``--breakdown`` times directly, as (column, class, method). ``Metrics.on_round`` calls the evaluation
#: (through the round's flush); ``metrics`` below is on_round and finish without it.
_TIMED = (
    ("step", SimWorker, "train"),
    ("aggregation", Combiner, "__call__"),
    ("evaluation", Trainer, "evaluate"),
    ("metrics", Metrics, "on_round"),
    ("metrics", Metrics, "finish"),
)


def _timed(fn, name: str, spent: dict[str, float]):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - start

    return wrapper


def attributed(p, config: SimConfig, rounds: int, repeat: int) -> dict[str, float]:
    """Seconds per run (medians over ``repeat``) of the simulation and of its parts, each part timed where it
    runs (a wrapper around the methods of ``_TIMED``, scoped to this function), and of the local steps of
    the pure-training replay timed the same way."""
    runs: list[dict[str, float]] = []
    for _ in range(repeat):
        spent: dict[str, float] = {}
        with ExitStack() as stack:
            for name, owner, method in _TIMED:
                fn = getattr(owner, method)
                stack.enter_context(mock.patch.object(owner, method, _timed(fn, name, spent)))
            start = time.perf_counter()
            run(p)
            spent["sim"] = time.perf_counter() - start
            steps = spent.pop("step")
            start = time.perf_counter()
            pure_training(config, p, rounds)
            spent["pure"] = time.perf_counter() - start
            spent["alone"] = spent.pop("step")
            spent["step"] = steps
        spent["metrics"] -= spent.get("evaluation", 0.0)
        spent["engine"] = (
            spent["sim"]
            - spent["step"]
            - spent["aggregation"]
            - spent["metrics"]
            - spent.get("evaluation", 0.0)
        )
        with ExitStack() as stack:  # the engine, protocol and set-up with nothing else in the caches
            stack.enter_context(mock.patch.object(SimWorker, "train", _same_vector))
            stack.enter_context(mock.patch.object(Combiner, "__call__", _keep_own))
            stack.enter_context(mock.patch.object(Metrics, "on_round", _ignore_round))
            start = time.perf_counter()
            run(p)
            spent["engine_alone"] = time.perf_counter() - start
        runs.append(spent)
    return {key: statistics.median(r.get(key, 0.0) for r in runs) for key in runs[0]}


def _same_vector(self, node, round, params, steps):
    return params, float("nan")


def _keep_own(self, own, received, weights):
    return own


def _ignore_round(self, engine, node, action, now):
    return None


def same_mlp(input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
    """The built-in ``mlp``, written as a user would."""
    nn = torch.nn
    features = 1
    for d in input_shape:
        features *= d
    return nn.Sequential(nn.Flatten(), nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, num_classes))


def custom_model_cost(args: argparse.Namespace) -> None:
    from phalanx.api import prepare

    rows = []
    for n in args.nodes:
        settings = dict(
            nodes=n,
            rounds=args.rounds,
            topology=f"regular:{args.degree}",
            dataset="mnist",
            local_steps=args.local_steps,
            eval_every=args.rounds,
            eval_nodes=8,
            eval_samples=500,
            threads=1,
        )
        plans = {
            "built-in": prepare(model="mlp", **settings),
            "import path": prepare(model="bench_sim:same_mlp", **settings),
            "API object": prepare(model=same_mlp, **settings),
        }
        for p in plans.values():  # warm-up: first-use costs (allocations, thread pools) are no one's
            run(p)
        times: dict[str, list[float]] = {k: [] for k in plans}
        ratios: dict[str, list[float]] = {k: [] for k in plans}
        last: dict[str, list] = {}
        kinds = list(plans)
        for k in range(args.repeat):  # the order rotates, so load from other processes hits every side alike
            order = kinds[k % len(kinds) :] + kinds[: k % len(kinds)]
            spent = {}
            for kind in order:
                start = time.perf_counter()
                result = run(plans[kind])
                spent[kind] = time.perf_counter() - start
                last[kind] = result.rows
            for kind in kinds:
                times[kind].append(spent[kind])
                ratios[kind].append(spent[kind] / spent["built-in"])
        strip = [[{k: v for k, v in r.items() if k != "wall_time"} for r in rows_] for rows_ in last.values()]
        assert all(s == strip[0] for s in strip), "the three runs should train identical models"
        for kind in kinds:
            rs = sorted(ratios[kind])
            rows.append(
                {
                    "nodes": n,
                    "model": kind,
                    "wall_s": statistics.median(times[kind]),
                    "best_s": min(times[kind]),
                    "ratio": statistics.median(rs),
                    "spread": f"{rs[0]:.3f}-{rs[-1]:.3f}",
                }
            )
    print(
        table(
            rows,
            (
                ("nodes", "nodes", ""),
                ("model", "model", ""),
                ("wall_s", "wall s (median)", ".3f"),
                ("best_s", "best s", ".3f"),
                ("ratio", "vs built-in (median of paired ratios)", ".3f"),
                ("spread", "min-max ratio", ""),
            ),
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[64, 1000])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--rule", default="trimmed-mean")
    parser.add_argument("--f", type=int, default=1)
    parser.add_argument("--degree", type=int, default=8)
    parser.add_argument("--local-steps", type=int, default=1, help="local SGD steps per round (issue: 1)")
    parser.add_argument("--repeat", type=int, default=3, help="simulation / pure-training pairs per size")
    parser.add_argument(
        "--train-batch",
        type=int,
        default=Engine.train_batch,
        help="trainings due at the same instant run before their events are handled (1: one at a time)",
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also time each part (steps, aggregation, metrics, evaluation, engine) per node and round",
    )
    parser.add_argument(
        "--custom", action="store_true", help="the same MLP built-in, by import path and as an API object"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.custom:
        custom_model_cost(args)
        return
    Engine.train_batch = args.train_batch
    rows = []
    parts = []
    for n in args.nodes:
        config = SimConfig(
            name=f"bench-{n}",
            nodes=n,
            rounds=args.rounds,
            topology=f"regular:{args.degree}",
            dataset="mnist",
            model="mlp",
            local_steps=args.local_steps,
            rule=args.rule,
            rule_params={"f": args.f} if args.rule != "mean" else {},
            eval_every=args.rounds,
            eval_nodes=8,
            eval_samples=500,
        )
        p = plan(config)
        sims, pures = [], []
        peak = 0.0
        for k in range(args.repeat):  # alternated, so load from other processes hits both sides alike
            start = time.perf_counter()
            result = run(p)
            sims.append(time.perf_counter() - start)
            if k == 0:  # the simulation's own peak, before the pure-training replays allocate theirs
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            pures.append(pure_training(config, p, args.rounds))
        ratios = sorted(a / b for a, b in zip(sims, pures))
        rows.append(
            {
                "nodes": n,
                "rule": args.rule,
                "steps": n * args.rounds * args.local_steps,
                "messages": result.rows[-1]["messages"],
                "sim_s": statistics.median(sims),
                "train_s": statistics.median(pures),
                "overhead": statistics.median(ratios),
                "spread": f"{ratios[0]:.2f}-{ratios[-1]:.2f}",
                "peak_mb": peak,
            }
        )
        print(
            f"nodes={n}: simulated {sims} s, pure training {pures} s, peak {peak:.0f} MB",
            flush=True,
        )
        if args.breakdown:
            per = 1e6 / (n * args.rounds)  # seconds of a whole run -> microseconds per node and round
            t = attributed(p, config, args.rounds, args.repeat)
            parts.append(
                {
                    "nodes": n,
                    "alone": t["alone"] * per,
                    "step": t["step"] * per,
                    "aggregation": t["aggregation"] * per,
                    "metrics": t["metrics"] * per,
                    "evaluation": t["evaluation"] * per,
                    "engine": t["engine"] * per,
                    "engine_alone": t["engine_alone"] * per,
                    "overhead": (t["sim"] - t["pure"]) * per,
                    "ratio": t["sim"] / t["pure"],
                }
            )
    print(
        table(
            rows,
            (
                ("nodes", "nodes", ""),
                ("rule", "rule", ""),
                ("steps", "local steps", ""),
                ("messages", "messages", ""),
                ("sim_s", "simulated s", ".2f"),
                ("train_s", "training only s", ".2f"),
                ("overhead", "overhead", ".2f"),
                ("spread", "min-max", ""),
                ("peak_mb", "peak MB", ".0f"),
            ),
        )
    )
    if parts:
        print(
            "\nper node and round, us, each part timed where it runs (one more run of each side per --repeat)"
        )
        print(
            table(
                parts,
                (
                    ("nodes", "nodes", ""),
                    ("alone", "step alone", ".0f"),
                    ("step", "step in sim", ".0f"),
                    ("aggregation", "aggregation", ".0f"),
                    ("metrics", "consensus+metrics", ".0f"),
                    ("evaluation", "evaluation", ".0f"),
                    ("engine", "engine+protocol+set-up", ".0f"),
                    ("engine_alone", "(same, run alone)", ".0f"),
                    ("overhead", "sim - pure", ".0f"),
                    ("ratio", "ratio (timed runs)", ".2f"),
                ),
            )
        )


if __name__ == "__main__":
    main()
