"""The checks of decentralized sampling (issue 5), each printed as a table. Run one with a subcommand:

    python scripts/modest_checks.py vs-dpsgd     # bytes to reach a target accuracy: MoDeST vs D-PSGD
    python scripts/modest_checks.py dropout      # 80% of the nodes crash mid-run: MoDeST keeps going
    python scripts/modest_checks.py byzantine    # Byzantine aggregators: plain vs robust MoDeST
    python scripts/modest_checks.py el           # EL-Local, EL-Oracle vs D-PSGD on an s-regular graph

Every run is a simulation on the embedded MNIST (MLP 784-64-10) by default, deterministic from --seed, through
the one simulation pipeline (``phalanx.sim.experiment``) that ``phalanx sim`` runs. Accuracy of a round is the
mean test accuracy of up to 3 (``--eval-models``) models reported for that round (MoDeST: round k's aggregate as
the trainers of round k + 1 receive it; D-PSGD and EL: nodes' models after combining).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace

import torch

from phalanx.sim import experiment
from phalanx.sim.config import SimConfig


@dataclass(frozen=True, slots=True)
class Row:
    round: int
    live: int
    reporters: int
    acc: float | None
    time: float
    bytes: int


@dataclass(slots=True)
class SimRun:
    rows: list[Row]
    bytes_sent: int
    wall: float

    def first_reaching(self, target: float) -> Row | None:
        return next((r for r in self.rows if r.acc is not None and r.acc >= target), None)


def simulate(config: SimConfig, *, eval_every: int, eval_models: int = 3) -> SimRun:
    start = time.perf_counter()
    result = experiment.run(experiment.plan(replace(config, eval_every=eval_every, eval_nodes=eval_models)))
    rows = [
        Row(r["round"], r["live"], r["honest_reported"], r["acc_mean"], r["virtual_time"], r["bytes"])
        for r in result.rows
    ]
    return SimRun(rows, result.engine_stats["bytes"], time.perf_counter() - start)


def base(args: argparse.Namespace, **changes: object) -> SimConfig:
    config = SimConfig(
        nodes=args.nodes,
        rounds=args.rounds,
        seed=args.seed,
        dataset=args.dataset,
        partition=args.partition,
        model="mlp",
        local_steps=args.local_steps,
        lr=0.05,
        round_timeout=1.0,
        step_time=0.01,
        latency=0.01,
    )
    return replace(config, **changes)  # type: ignore[arg-type]


def fmt(x: float | None, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def final_acc(run: SimRun) -> float | None:
    return next((r.acc for r in reversed(run.rows) if r.acc is not None), None)


def report(name: str, run: SimRun, target: float) -> tuple[int | None, int | None]:
    hit = run.first_reaching(target)
    print(
        f"{name:<22} rounds {len(run.rows):>4}  final acc {fmt(final_acc(run))}  "
        f"reached {target:.2f} at round {fmt(hit.round if hit else None, 'd') if hit else '-':>4}  "
        f"MB by then {fmt(hit.bytes / 1e6 if hit else None, '.1f'):>8}  total MB {run.bytes_sent / 1e6:.1f}  "
        f"wall {run.wall:.0f}s"
    )
    return (hit.round if hit else None), (hit.bytes if hit else None)


def vs_dpsgd(args: argparse.Namespace) -> int:
    modest = simulate(
        base(args, protocol="modest", protocol_params={"s": args.s, "a": args.a}),
        eval_every=1,
        eval_models=args.eval_models,
    )
    dpsgd = simulate(
        base(args, protocol="dpsgd", topology=f"regular:{args.degree}"),
        eval_every=1,
        eval_models=args.eval_models,
    )
    print(f"\n{args.nodes} nodes, {args.dataset} {args.partition}, {args.local_steps} local steps")
    report(f"modest s={args.s} a={args.a}", modest, args.target)
    report(f"dpsgd regular:{args.degree}", dpsgd, args.target)
    print(
        f"\n{'target':>6} {'modest round':>12} {'modest MB':>10} {'dpsgd round':>11} {'dpsgd MB':>9} {'ratio':>6}"
    )
    ratios = []
    for target in args.targets:
        m, d = modest.first_reaching(target), dpsgd.first_reaching(target)
        ratio = d.bytes / m.bytes if m and d and m.bytes else None
        if ratio is not None:
            ratios.append(ratio)
        print(
            f"{target:>6.2f} {fmt(m.round if m else None, 'd'):>12} {fmt(m.bytes / 1e6 if m else None, '.1f'):>10} "
            f"{fmt(d.round if d else None, 'd'):>11} {fmt(d.bytes / 1e6 if d else None, '.1f'):>9} "
            f"{fmt(ratio, '.1f'):>6}"
        )
    print("ratio = D-PSGD bytes / MoDeST bytes sent until the first round whose models reach the target")
    return 0 if ratios and min(ratios) > 1 else 1


def dropout(args: argparse.Namespace) -> int:
    config = base(
        args,
        protocol="modest",
        protocol_params={"s": args.s, "a": args.a, "success_fraction": args.success_fraction},
        crash_fraction=args.fraction,
        crash_round=args.crash_round,
    )
    run = simulate(config, eval_every=1)
    print(
        f"\nMoDeST, {args.nodes} nodes, s={args.s}, a={args.a}: {args.fraction:.0%} crash when round "
        f"{args.crash_round} starts"
    )
    print(f"{'round':>5} {'live':>5} {'trainers':>8} {'acc':>7} {'virtual s':>9} {'MB':>8}")
    for r in run.rows:
        print(
            f"{r.round:>5} {r.live:>5} {r.reporters:>8} {fmt(r.acc):>7} {r.time:>9.2f} {r.bytes / 1e6:>8.1f}"
        )
    before = [r.acc for r in run.rows if r.round < args.crash_round and r.acc is not None]
    after = [r.acc for r in run.rows if r.round >= args.crash_round and r.acc is not None]
    done = len(run.rows) == args.rounds
    print(
        f"rounds completed: {len(run.rows)}/{args.rounds}; acc at the crash {fmt(before[-1] if before else None)}, "
        f"best after {fmt(max(after) if after else None)}, final {fmt(run.rows[-1].acc)}"
    )
    return 0 if done and after and before and max(after) > before[-1] else 1


def byzantine(args: argparse.Namespace) -> int:
    common = {"s": args.s, "a": args.a, "byzantine_roles": "aggregator"}
    robust = {**common, "trainer_combine_rule": "median"}
    attack = {
        "byzantine_fraction": args.fraction,
        "attack": args.attack,
        "attack_params": dict(args.attack_param)
        or ({"value": 1000.0} if args.attack == "large-value" else {}),
    }
    runs = {}
    for name, params, attacked in [
        ("attack-free", common, False),
        ("plain, attacked", common, True),
        ("robust, attack-free", robust, False),
        ("robust, attacked", robust, True),
    ]:
        config = base(args, protocol="modest", protocol_params=params, **(attack if attacked else {}))
        runs[name] = simulate(config, eval_every=args.eval_every, eval_models=args.eval_models)
    print(
        f"\nMoDeST, {args.nodes} nodes, s={args.s}, a={args.a}; {args.fraction:.0%} Byzantine nodes "
        f"attack as aggregators with {args.attack}; robust = trainers take the median of the a aggregates"
    )
    header = "".join(f"{name:>21}" for name in runs)
    print(f"{'round':>5}{header}")
    rows = {name: {r.round: r.acc for r in run.rows} for name, run in runs.items()}
    for k in range(0, args.rounds, args.eval_every):
        print(f"{k:>5}" + "".join(f"{fmt(rows[name].get(k)):>21}" for name in runs))
    finals = {
        name: next((r.acc for r in reversed(run.rows) if r.acc is not None), None)
        for name, run in runs.items()
    }
    print("final: " + ", ".join(f"{name} {fmt(acc)}" for name, acc in finals.items()))
    ok = (
        (finals["robust, attacked"] or 0)
        >= (finals["attack-free"] or 0) - 0.05
        > (finals["plain, attacked"] or 0)
    )
    return 0 if ok else 1


def el(args: argparse.Namespace) -> int:
    runs = {
        f"el-local s={args.s}": simulate(
            base(args, protocol="el-local", protocol_params={"s": args.s}),
            eval_every=1,
            eval_models=args.eval_models,
        ),
        f"el-oracle s={args.s}": simulate(
            base(args, protocol="el-oracle", protocol_params={"s": args.s}),
            eval_every=1,
            eval_models=args.eval_models,
        ),
        f"dpsgd regular:{args.s}": simulate(
            base(args, protocol="dpsgd", topology=f"regular:{args.s}"),
            eval_every=1,
            eval_models=args.eval_models,
        ),
    }
    print(
        f"\n{args.nodes} nodes, {args.dataset} {args.partition}, {args.local_steps} local steps, s = {args.s}"
    )
    print(f"rounds to reach each target accuracy (mean of {args.eval_models} nodes' models):")
    print(f"{'target':>6}" + "".join(f"{name:>20}" for name in runs))
    for target in args.targets:
        cells = []
        for run in runs.values():
            hit = run.first_reaching(target)
            cells.append(f"{fmt(hit.round if hit else None, 'd'):>20}")
        print(f"{target:>6.2f}" + "".join(cells))
    print(f"{'final':>6}" + "".join(f"{fmt(final_acc(run)):>20}" for run in runs.values()))
    return 0


def main(argv: list[str] | None = None) -> int:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="check", required=True)

    def common(p: argparse.ArgumentParser, *, rounds: int, s: int, local_steps: int = 10) -> None:
        p.add_argument("--nodes", type=int, default=100)
        p.add_argument("--rounds", type=int, default=rounds)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--dataset", default="mnist")
        p.add_argument("--partition", default="iid")
        p.add_argument("--local-steps", type=int, default=local_steps)
        p.add_argument("--s", type=int, default=s)
        p.add_argument("--eval-every", type=int, default=2)
        p.add_argument("--target", type=float, default=0.85)
        p.add_argument("--eval-models", type=int, default=3, help="models averaged per evaluated round")

    p = sub.add_parser("vs-dpsgd")
    common(p, rounds=30, s=10)
    p.add_argument("--targets", type=float, nargs="+", default=[0.85, 0.88, 0.9, 0.92])
    p.add_argument("--a", type=int, default=1)
    p.add_argument("--degree", type=int, default=4)
    p = sub.add_parser("dropout")
    common(p, rounds=40, s=10)
    p.add_argument("--a", type=int, default=2)
    p.add_argument("--fraction", type=float, default=0.8)
    p.add_argument("--crash-round", type=int, default=15)
    p.add_argument("--success-fraction", type=float, default=0.5)
    p = sub.add_parser("byzantine")
    common(p, rounds=30, s=10)
    p.add_argument("--a", type=int, default=5)
    p.add_argument("--fraction", type=float, default=0.1)
    p.add_argument(
        "--attack", default="large-value", help="any attack of phalanx.aggregation (default large-value)"
    )
    p.add_argument(
        "--attack-param",
        type=lambda t: (t.split("=")[0], float(t.split("=")[1])),
        action="append",
        default=[],
    )
    p = sub.add_parser("el")
    common(p, rounds=30, s=4, local_steps=5)
    p.set_defaults(partition="dirichlet:0.1", eval_models=10)
    p.add_argument("--targets", type=float, nargs="+", default=[0.8, 0.85, 0.88, 0.9])
    args = parser.parse_args(argv)
    return {"vs-dpsgd": vs_dpsgd, "dropout": dropout, "byzantine": byzantine, "el": el}[args.check](args)


if __name__ == "__main__":
    sys.exit(main())
