"""``phalanx sim``: simulate a decentralized learning run from a TOML config, a preset, and/or flags."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from phalanx.cli import non_negative_float, non_negative_int, positive_float, positive_int
from phalanx.options import protocol_help, topology_help


def _ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated node ids, got {text!r}") from None
    if any(i < 0 for i in ids):
        raise argparse.ArgumentTypeError("node ids must be >= 0")
    return ids


def _interval(text: str) -> list[int]:
    parts = text.split(":")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected START:END rounds, got {text!r}")
    return [int(parts[0]), int(parts[1])]


def _fraction(text: str) -> float:
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text}")
    return value


def _kv(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


# (flag, config key, type, help)
FLAGS: tuple[tuple[str, str, Any, str], ...] = (
    ("--name", "name", str, "run name (default: run)"),
    ("--nodes", "nodes", positive_int, "number of nodes"),
    ("--rounds", "rounds", positive_int, "number of rounds"),
    ("--seed", "seed", int, "random seed: the same seed gives the same metrics"),
    ("--topology", "topology", str, topology_help()),
    ("--mixing", "mixing", str, "metropolis, uniform or max-degree"),
    ("--protocol", "protocol", str, protocol_help()),
    ("--rule", "rule", str, "aggregation rule (mean = D-PSGD mixing)"),
    ("--local-steps", "local_steps", non_negative_int, "local SGD steps per round"),
    ("--gossip-steps", "gossip_steps", positive_int, "Q gossip exchanges per round (DFedSAM-MGS)"),
    ("--round-timeout", "round_timeout", positive_float, "virtual seconds to wait for neighbours"),
    ("--dataset", "dataset", str, "mnist, blobs or idx:PATH"),
    ("--partition", "partition", str, "iid, dirichlet:ALPHA or shards:K"),
    ("--model", "model", str, "logreg, mlp, cnn or cnn-dropout"),
    ("--lr", "lr", positive_float, "learning rate"),
    ("--momentum", "momentum", non_negative_float, "SGD momentum"),
    ("--weight-decay", "weight_decay", non_negative_float, "L2 weight decay"),
    ("--batch-size", "batch_size", positive_int, "batch size"),
    ("--sam-rho", "sam_rho", non_negative_float, "SAM radius (DFedSAM); 0 = plain SGD"),
    ("--step-time", "step_time", positive_float, "virtual seconds per local step"),
    ("--latency", "latency", non_negative_float, "default link latency (virtual seconds)"),
    ("--bandwidth", "bandwidth", positive_float, "default link bandwidth (bytes per virtual second)"),
    ("--loss", "loss", non_negative_float, "message loss probability"),
    ("--crash-fraction", "crash_fraction", _fraction, "fraction of honest nodes that crash"),
    ("--crash-nodes", "crash_nodes", _ids, "comma-separated ids of nodes that crash"),
    ("--crash-round", "crash_round", non_negative_int, "round at which they crash"),
    ("--crash-placement", "crash_placement", str, "random, hubs, relays or data"),
    ("--churn-leave", "churn_leave", _fraction, "per-round probability that a node leaves"),
    ("--churn-rejoin", "churn_rejoin", _fraction, "per-round probability that a departed node rejoins"),
    (
        "--churn-trace",
        "churn_trace",
        str,
        "CSV churn trace (time,node,event: join, leave or crash), any protocol",
    ),
    (
        "--churn-leave-rate",
        "churn_leave_rate",
        non_negative_float,
        "announced leaves per virtual second per node",
    ),
    (
        "--churn-crash-rate",
        "churn_crash_rate",
        non_negative_float,
        "silent crashes per virtual second per node",
    ),
    (
        "--churn-rejoin-rate",
        "churn_rejoin_rate",
        non_negative_float,
        "returns per virtual second per absent node",
    ),
    ("--churn-late", "churn_late", _fraction, "fraction of nodes that join late, at a uniform time"),
    ("--partition-rounds", "partition_rounds", _interval, "START:END rounds of a network partition"),
    (
        "--partition-nodes",
        "partition_nodes",
        _ids,
        "comma-separated ids on one side of the partition (default: first half)",
    ),
    ("--straggler-fraction", "straggler_fraction", _fraction, "fraction of slow trainers"),
    ("--straggler-slowdown", "straggler_slowdown", positive_float, "how many times slower they train"),
    ("--byzantine-fraction", "byzantine_fraction", _fraction, "fraction of Byzantine nodes"),
    ("--byzantine-nodes", "byzantine_nodes", _ids, "comma-separated ids of Byzantine nodes"),
    ("--byzantine-placement", "byzantine_placement", str, "random, hubs or target"),
    ("--byzantine-target", "byzantine_target", non_negative_int, "node surrounded by placement 'target'"),
    (
        "--attack",
        "attack",
        str,
        "an aggregation attack (alie, ipm, ...), dissensus, label-flip, silent, equivocation",
    ),
    (
        "--threads",
        "threads",
        positive_int,
        "torch threads during the run (default 1: fastest for small models)",
    ),
    ("--eval-every", "eval_every", positive_int, "evaluate every N rounds"),
    (
        "--eval-nodes",
        "eval_nodes",
        non_negative_int,
        "evaluate a fixed seeded subset of K honest nodes (0 = all)",
    ),
    ("--eval-samples", "eval_samples", non_negative_int, "evaluate on the first N test samples (0 = all)"),
)

# (flag, config key, help): on/off settings, each with its --no- form
SWITCHES: tuple[tuple[str, str, str], ...] = (
    ("--omniscient", "omniscient", "simulated attackers see the honest vectors they need (default: yes)"),
    (
        "--uplink-queue",
        "uplink_queue",
        "a node's messages share its uplink's bandwidth, one after another (default: independent links)",
    ),
    (
        "--include-own",
        "include_own",
        "robust (non-gossip) rules aggregate the node's own model with its neighbours' (default: yes)",
    ),
)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML config file (flags override it)")
    parser.add_argument("--preset", help="start from a shipped preset (see --list-presets)")
    parser.add_argument("--list-presets", action="store_true", help="list the shipped presets and exit")
    group = parser.add_argument_group("run settings (each also a key of the TOML file)")
    for flag, key, kind, text in FLAGS:
        group.add_argument(flag, dest=key, type=kind, default=None, help=text)
    for flag, key, text in SWITCHES:
        group.add_argument(flag, dest=key, action=argparse.BooleanOptionalAction, default=None, help=text)
    for table in ("rule", "attack", "protocol"):
        group.add_argument(
            f"--{table}-param",
            dest=f"{table}_params",
            type=_kv,
            action="append",
            default=None,
            metavar="KEY=VALUE",
            help=f"a {table} parameter (repeatable), e.g. f=2",
        )


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The preset, then the file, then the flags actually given (tables merge key by key), as plain values."""
    from phalanx.sim.config import FIELDS, load_preset, load_toml, parse_value

    data: dict[str, Any] = {}
    if args.preset:
        data.update(load_preset(args.preset))
    if args.config:
        data.update(load_toml(args.config))
    for key in FIELDS:
        value = getattr(args, key, None)
        if value is None:
            continue
        if key.endswith("_params"):
            table = dict(data.get(key, {}))
            table.update({k: parse_value(v) for k, v in value})
            value = table
        data[key] = value
    return data


def config_from_args(args: argparse.Namespace) -> Any:
    from phalanx.sim.config import from_mapping

    return from_mapping(settings_from_args(args))


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "sim", help="simulate a network of nodes: topology, protocol, rule, attacks, faults"
    )
    add_config_arguments(parser)
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: runs/NAME)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_sim)


def run_sim(args: argparse.Namespace) -> int:
    from phalanx.sim.config import preset_names

    if args.list_presets:
        from phalanx.sim.config import preset_description

        for name in preset_names():
            print(f"{name:16s} {preset_description(name)}")
        return 0
    config = config_from_args(args)
    from tqdm import tqdm

    from phalanx.sim.experiment import plan, run
    from phalanx.sim.report import summary_table, write_run

    checked = plan(config)  # every config error surfaces here, before training
    out = args.out or Path("runs") / config.name
    print(
        f"sim: {config.nodes} nodes, {config.topology} (spectral gap {checked.spectral_gap:.4f}), "
        f"{config.protocol} + {config.rule}, {len(checked.byzantine)} Byzantine ({config.attack if checked.byzantine else '-'}), "
        f"{len(checked.crashed)} crashing, {config.rounds} rounds on {config.dataset}",
        flush=True,
    )
    with tqdm(
        total=config.rounds, unit="round", disable=args.no_progress or None, file=sys.stderr, leave=False
    ) as bar:

        def progress(row: dict[str, Any]) -> None:
            bar.update(1)
            if row.get("acc_mean") is not None:
                bar.set_postfix(acc=f"{row['acc_mean']:.3f}")

        result = run(checked, progress=progress)
    info = write_run(result, out, plots=not args.no_plots)
    print(summary_table([info]))
    print(f"wrote {out}/ (config.toml, metrics.jsonl, summary.json{'' if args.no_plots else ', plots'})")
    return 0
