"""``phalanx sim``: simulate a decentralized learning run from a TOML config, a preset, and/or flags."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from phalanx.cli import (
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    seed_list,
    seeds_setting,
)
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


# (config key, type of its flag --KEY-WITH-DASHES); each flag's help is its SimConfig field's (flag_help)
FLAGS: tuple[tuple[str, Any], ...] = (
    ("name", str),
    ("nodes", positive_int),
    ("rounds", positive_int),
    ("seed", int),
    ("topology", str),
    ("mixing", str),
    ("protocol", str),
    ("rule", str),
    ("local_steps", positive_int),
    ("gossip_steps", positive_int),
    ("round_timeout", positive_float),
    ("dataset", str),
    ("partition", str),
    ("model", str),
    ("lr", positive_float),
    ("momentum", non_negative_float),
    ("weight_decay", non_negative_float),
    ("batch_size", positive_int),
    ("sam_rho", non_negative_float),
    ("buffers", str),
    ("train_only", str),  # transfer learning (docs/transfer.md)
    ("features", str),
    ("eval_holdout", non_negative_int),  # held-out local evaluation (issue 15)
    ("optimizer", str),  # optimizer, loss_fn, device: issue 16
    ("loss_fn", str),
    ("device", str),
    ("step_time", positive_float),
    ("latency", non_negative_float),
    ("bandwidth", positive_float),
    ("loss", non_negative_float),
    ("crash_fraction", _fraction),
    ("crash_nodes", _ids),
    ("crash_round", non_negative_int),
    ("crash_placement", str),
    ("churn_leave", _fraction),
    ("churn_rejoin", _fraction),
    ("churn_trace", str),
    ("churn_leave_rate", non_negative_float),
    ("churn_crash_rate", non_negative_float),
    ("churn_rejoin_rate", non_negative_float),
    ("churn_late", _fraction),
    ("partition_rounds", _interval),
    ("partition_nodes", _ids),
    ("straggler_fraction", _fraction),
    ("straggler_slowdown", positive_float),
    ("byzantine_fraction", _fraction),
    ("byzantine_nodes", _ids),
    ("byzantine_placement", str),
    ("byzantine_target", non_negative_int),
    ("attack", str),
    ("threads", positive_int),
    ("eval_every", positive_int),
    ("eval_nodes", non_negative_int),
    ("eval_samples", non_negative_int),
    # compressed exchange and differential privacy (issue 18)
    ("compress", str),
    ("dp_clip", non_negative_float),
    ("dp_sigma", non_negative_float),
    ("dp_epsilon", non_negative_float),
    ("dp_delta", positive_float),
)

# on/off settings, each with its --no- form
SWITCHES: tuple[str, ...] = (
    "omniscient",
    "uplink_queue",
    "include_own",
)


def flag_of(key: str) -> str:
    return "--" + key.replace("_", "-")


def flag_help(key: str) -> str:
    """A run setting's flag help: its ``SimConfig`` field's help and default (one place for both); the
    topology and protocol lists come from their registries, when help is shown."""
    from phalanx.gossip.fields import help_with_default
    from phalanx.sim.config import FIELDS

    f = FIELDS[key]
    if key == "topology":
        return topology_help(f.default)
    if key == "protocol":
        return protocol_help()
    return help_with_default(f).replace("%", "%%")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML config file (flags override it)")
    parser.add_argument("--preset", help="start from a shipped preset (see --list-presets)")
    parser.add_argument("--list-presets", action="store_true", help="list the shipped presets and exit")
    group = parser.add_argument_group("run settings (each also a key of the TOML file)")
    for key, kind in FLAGS:
        group.add_argument(flag_of(key), dest=key, type=kind, default=None, help=flag_help(key))
    for key in SWITCHES:
        group.add_argument(
            flag_of(key), dest=key, action=argparse.BooleanOptionalAction, default=None, help=flag_help(key)
        )
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

    settings = settings_from_args(args)
    settings.pop("seeds", None)  # a study setting (see run_sim), not one of a single run
    settings.pop("tensorboard", None)  # an output setting (see run_sim)
    return from_mapping(settings)


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "sim", help="simulate a network of nodes: topology, protocol, rule, attacks, faults"
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: runs/NAME, numbered if taken)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty --out (files of the same name are replaced)",
    )
    parser.add_argument(
        "--seeds",
        type=seed_list,
        default=None,
        help="run once per seed (0,1,2) and report mean and standard deviation; a top-level "
        "'seeds = [...]' in the config file does the same",
    )
    parser.add_argument(
        "--tensorboard",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write each round's metrics as TensorBoard scalars under DIR/<run folder name> "
        "(DIR/<name>/seed-S per seed); needs pip install 'phalanx[tensorboard]'; a top-level "
        "'tensorboard = \"DIR\"' in the config file does the same",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_sim)


def crash_list(checked: Any, most: int = 24) -> str:
    """The planned crashes as ``id: degree`` with their rounds (the first ``most`` of them)."""
    config = checked.config
    shown = [f"{i}: {checked.graph.degree[i]}" for i in checked.crashed[:most]]
    more = len(checked.crashed) - most
    rounds = sorted({config.crash_round_of(i) for i in checked.crashed})
    return (
        ", ".join(shown)
        + (f", ... ({more} more)" if more > 0 else "")
        + f" at round {', '.join(map(str, rounds))}"
    )


def tensorboard_root(args: argparse.Namespace, settings: dict[str, Any]) -> Path | None:
    """``--tensorboard DIR``, else the config file's ``tensorboard = "DIR"``, else None."""
    from phalanx.sim.config import ConfigError

    if args.tensorboard is not None:
        return Path(args.tensorboard)
    value = settings.get("tensorboard")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"tensorboard must be a folder path (a string), got {value!r}")
    return Path(value)


def run_sim(args: argparse.Namespace) -> int:
    from phalanx.sim.config import preset_names

    if args.list_presets:
        from phalanx.sim.config import preset_description

        for name in preset_names():
            print(f"{name:16s} {preset_description(name)}")
        return 0
    settings = settings_from_args(args)
    seeds = args.seeds or (seeds_setting(settings["seeds"]) if "seeds" in settings else [])
    config = config_from_args(args)
    from tqdm import tqdm

    from phalanx.api import execute, prepare  # the Python API's entry: the command is a layer over it
    from phalanx.sim.report import check_out_dir, numbered, seed_dir, summary_table, write_seed_dirs

    checked = prepare(config=config)  # every config error surfaces here, before training
    out = args.out or numbered(Path("runs") / config.name)
    check_out_dir(out, overwrite=args.overwrite)
    board = tensorboard_root(args, settings)
    if board is not None:
        from phalanx.node.tensorboard import check_available

        check_available()  # one error line now, not after the first run
    print(
        f"sim: {config.nodes} nodes, {config.topology} (spectral gap {checked.spectral_gap:.4f}), "
        f"{config.protocol} + {config.rule}, {len(checked.byzantine)} Byzantine ({config.attack if checked.byzantine else '-'}), "
        f"{len(checked.crashed)} crashing, {config.rounds} rounds on {config.dataset}",
        flush=True,
    )
    if checked.crashed:
        print(f"sim: crashing (node: degree): {crash_list(checked)}", flush=True)
    for seed in seeds or [None]:
        one = checked if seed is None else prepare(config=config, seed=seed)
        writer = None
        if board is not None:
            from phalanx.node.tensorboard import open_writer

            writer = open_writer(board / out.name if seed is None else seed_dir(board / out.name, seed))
        with tqdm(
            total=config.rounds,
            unit="round",
            disable=args.no_progress or None,
            file=sys.stderr,
            leave=False,
            desc=None if seed is None else f"seed {seed}",
        ) as bar:

            def progress(row: dict[str, Any], sink: Any = writer) -> None:
                bar.update(1)
                if sink is not None:
                    sink.write(row)
                if row.get("acc_mean") is not None:
                    bar.set_postfix(acc=f"{row['acc_mean']:.3f}")

            try:
                # out was checked above (a seed's folder lies inside it)
                done = execute(
                    one,
                    out=out if seed is None else seed_dir(out, seed),
                    overwrite=True,
                    plots=not args.no_plots,
                    progress=progress,
                )
            finally:
                if writer is not None:
                    writer.close()
        if seed is None:
            info = done.summary
    if seeds:
        info = write_seed_dirs(out, seeds, plots=not args.no_plots)
    print(summary_table([info]))
    files = "config.toml, metrics.jsonl, summary.json" + ("" if seeds else ", nodes.jsonl")
    print(f"wrote {out}/ ({files}{'' if args.no_plots else ', plots'})")
    if board is not None:
        print(f"wrote TensorBoard events to {board / out.name}/ (tensorboard --logdir {board})")
    return 0
