"""``phalanx net up``: a local network of real node processes on 127.0.0.1, wired by a simulator topology.

It writes the same files as ``phalanx sim`` (config.toml, metrics.jsonl, summary.json, plots) so a real run
and a simulated run of the same config compare side by side, plus nodes.json and the per-node table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from phalanx.cli import non_negative_int, positive_float, positive_int
from phalanx.node.config import default_of, help_of
from phalanx.options import (
    CHANNEL_SETTINGS,
    add_channel_arguments,
    add_data_arguments,
    add_training_arguments,
    protocol_help,
    topology_help,
)


def _byzantine(text: str) -> tuple[int, str]:
    index, sep, attack = text.partition(":")
    if not sep or not index.isdigit() or not attack:
        raise argparse.ArgumentTypeError(f"expected NODE:ATTACK, as in 2:alie; got {text!r}")
    return int(index), attack


def _kill(text: str) -> tuple[int, int]:
    index, sep, rnd = text.partition("@")
    if not sep or not index.isdigit() or not rnd.isdigit() or int(rnd) < 1:
        raise argparse.ArgumentTypeError(f"expected NODE@ROUND, as in 3@5; got {text!r}")
    return int(index), int(rnd)


def register(sub: Any) -> None:
    net = sub.add_parser("net", help="run a local network of real node processes")
    net_sub = net.add_subparsers(dest="net_command", metavar="COMMAND", parser_class=type(net))
    p = net_sub.add_parser(
        "up",
        help="start N real nodes on 127.0.0.1, run R rounds, report",
        description="Start N real phalanx node processes on 127.0.0.1 wired by a topology, wait for R rounds, "
        "print a per-node table and write the same files as 'phalanx sim'.",
    )
    p.add_argument("--nodes", type=positive_int, default=4, help="number of node processes (default 4)")
    p.add_argument("--topology", default="ring", help=topology_help("ring"))
    p.add_argument("--rounds", type=positive_int, default=10, help="rounds every node runs (default 10)")
    p.add_argument(
        "--byzantine",
        type=_byzantine,
        action="append",
        default=[],
        metavar="NODE:ATTACK",
        help="make NODE an attacker (alie, ipm, ..., label-flip, silent, equivocation)",
    )
    p.add_argument(
        "--kill",
        type=_kill,
        action="append",
        default=[],
        metavar="NODE@ROUND",
        help="SIGKILL NODE once it completed ROUND (a sampled protocol, MoDeST: once any node reported ROUND)",
    )
    p.add_argument("--out", type=Path, help="run directory (default runs/net-<time>)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty --out (files of the same name are replaced)",
    )
    p.add_argument("--timeout", type=positive_float, default=600.0, help="give up after this many seconds")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument(
        "--stall-timeout",
        type=positive_float,
        help="stop the run when a node completes no round for this many seconds "
        "(default max(60, 6 x round timeout x gossip steps))",
    )
    p.add_argument(
        "--node-memory",
        type=positive_int,
        metavar="MIB",
        help="memory one node process takes, for the cap on the process count (default: an estimate)",
    )
    add_data_arguments(p)
    add_training_arguments(p)
    add_channel_arguments(p)
    g = p.add_argument_group("protocol")
    # the nodes' settings: default and help of each are NodeConfig's (phalanx.node.config)
    g.add_argument("--protocol", default=default_of("protocol"), help=protocol_help())
    g.add_argument(
        "--protocol-param", action="append", default=[], metavar="KEY=VALUE", help=help_of("protocol_params")
    )
    g.add_argument("--rule", default=default_of("rule"), help=help_of("rule"))
    for key in ("rule_params", "attack_params"):
        g.add_argument(
            "--" + key[:-1].replace("_", "-"),
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=help_of(key),
        )
    for key, kind in (
        ("local_steps", non_negative_int),
        ("gossip_steps", positive_int),
        ("round_timeout", positive_float),
        ("eval_every", non_negative_int),
    ):
        g.add_argument("--" + key.replace("_", "-"), type=kind, default=default_of(key), help=help_of(key))
    p.set_defaults(func=run_net, command="net up")
    net.set_defaults(func=lambda args: (net.print_help(), 2)[1])


def sim_config(args: argparse.Namespace) -> Any:
    """The simulator config that describes this network (uniform mixing: what a real node uses): its
    protocol and protocol params, every attacker's own attack and every kill's own round, so the run
    folder's ``config.toml`` describes the run that happened (and ``phalanx sim`` can replay it)."""
    from phalanx.node.config import parse_pairs
    from phalanx.sim.config import from_mapping

    data: dict[str, Any] = {
        "name": f"net-{args.topology.replace(':', '-')}-{args.nodes}",
        "nodes": args.nodes,
        "rounds": args.rounds,
        "seed": args.seed,
        "topology": args.topology,
        "mixing": "uniform",
        "protocol": args.protocol,
        "protocol_params": parse_pairs(args.protocol_param, "--protocol-param"),
        "rule": args.rule,
        "rule_params": parse_pairs(args.rule_param, "--rule-param"),
        "local_steps": args.local_steps,
        "gossip_steps": args.gossip_steps,
        "round_timeout": args.round_timeout,
        "dataset": args.dataset,
        "partition": args.partition,
        "model": args.model,
        "lr": args.lr,
        "momentum": args.momentum,
        "weight_decay": args.weight_decay,
        "batch_size": args.batch_size,
        "sam_rho": args.sam_rho,
        "buffers": args.buffers,
        "train_only": args.train_only,
        "features": args.features,
        "eval_holdout": args.eval_holdout,  # held-out local evaluation (issue 15)
        "optimizer": args.optimizer,
        "loss_fn": args.loss_fn,
        "device": args.device,
        "eval_every": max(1, args.eval_every),
        **{key: getattr(args, key) for key in CHANNEL_SETTINGS},
    }
    if args.byzantine:
        data["byzantine_nodes"] = [i for i, _ in args.byzantine]
        data["attack"] = args.byzantine[0][1]
        data["attacks"] = {str(i): attack for i, attack in args.byzantine}
        data["attack_params"] = parse_pairs(args.attack_param, "--attack-param")
    if args.kill:
        data["crash_nodes"] = [i for i, _ in args.kill]
        data["crash_round"] = min(r for _, r in args.kill)
        data["crash_rounds"] = {str(i): r for i, r in args.kill}
    return from_mapping(data)


def node_args(args: argparse.Namespace) -> list[str]:
    out = [
        "--dataset",
        args.dataset,
        "--partition",
        args.partition,
        "--model",
        args.model,
        "--lr",
        str(args.lr),
        "--momentum",
        str(args.momentum),
        "--weight-decay",
        str(args.weight_decay),
        "--batch-size",
        str(args.batch_size),
        "--sam-rho",
        str(args.sam_rho),
        "--buffers",
        args.buffers,
        "--train-only",
        args.train_only,
        "--eval-holdout",
        str(args.eval_holdout),
        "--optimizer",
        args.optimizer,
        "--loss-fn",
        args.loss_fn,
        "--device",
        args.device,
        "--seed",
        str(args.seed),
        "--protocol",
        args.protocol,
        "--rule",
        args.rule,
        "--local-steps",
        str(args.local_steps),
        "--gossip-steps",
        str(args.gossip_steps),
        "--round-timeout",
        str(args.round_timeout),
        "--eval-every",
        str(args.eval_every),
    ]
    if args.features:  # children start in their own folders
        out += ["--features", str(Path(args.features).resolve())]
    for key in CHANNEL_SETTINGS:  # compression and privacy (issue 18)
        out += ["--" + key.replace("_", "-"), str(getattr(args, key))]
    for pair in args.rule_param:
        out += ["--rule-param", pair]
    for pair in args.attack_param:
        out += ["--attack-param", pair]
    for pair in args.protocol_param:
        out += ["--protocol-param", pair]
    return out


def run_net(args: argparse.Namespace) -> int:
    import trio

    from phalanx.node.netup import NetSpec, check_memory, node_memory_estimate, node_table, rows, run_network
    from phalanx.sim.experiment import Result, plan
    from phalanx.sim.report import summary_table, write_run

    config = sim_config(args)
    from phalanx.node.device import resolve_device

    resolve_device(config.device)  # an absent device: one line here, not one per node process
    checked = plan(config)  # the same checks as 'phalanx sim': topology, rule vs degree, attack names
    from phalanx.sim.report import check_out_dir

    out = args.out or Path("runs") / f"net-{time.strftime('%Y%m%d-%H%M%S')}"
    check_out_dir(out, overwrite=args.overwrite)
    sampled = checked.protocol.report == "sampled"  # only a round's sample reports it (MoDeST)
    spec = NetSpec(
        n=args.nodes,
        edges=sorted(tuple(sorted(e)) for e in checked.graph.edges()),
        rounds=args.rounds,
        workdir=out / "nodes",
        byzantine=dict(args.byzantine),
        kills=dict(args.kill),
        node_args=node_args(args),
        timeout=args.timeout,
        stall=args.stall_timeout or max(60.0, 6 * args.round_timeout * args.gossip_steps),
        node_memory=(args.node_memory << 20) if args.node_memory else node_memory_estimate(args.dataset),
        sampled=sampled,
        features_sha256=checked.features.sha256 if checked.features else "",
    )
    check_memory(spec.n, spec.node_memory)  # before anything is written
    print(
        f"net up: {args.nodes} node processes, {args.topology}, {args.rule}, {len(spec.byzantine)} Byzantine, "
        f"{len(spec.kills)} to kill, {args.rounds} rounds on {args.dataset}; run directory {out}/",
        flush=True,
    )
    if checked.features is not None:  # every node must report this hash (node.netup checks)
        print(
            f"net up: frozen features {checked.features.source} sha256 {checked.features.sha256}", flush=True
        )

    live = sys.stderr.isatty()  # a terminal gets one line that updates; a pipe or file gets periodic lines

    def progress(p: Any) -> None:
        if live:
            print("\r" + p.line() + "\x1b[K", end="", file=sys.stderr, flush=True)
        else:
            print(p.line(), file=sys.stderr, flush=True)

    print(f"net up: follow a node with: tail -f {spec.workdir}/node-0/log.jsonl", file=sys.stderr, flush=True)
    try:
        result = trio.run(
            lambda: run_network(
                spec, on_progress=progress, progress_every=0.5 if live else 2.0, check_mem=False
            )
        )
    except BaseExceptionGroup as group:  # Ctrl-C / SIGTERM arrive wrapped by the nursery; children are reaped
        if live:
            print(file=sys.stderr)
        from phalanx.node.app import leaves_of

        if any(isinstance(e, KeyboardInterrupt) for e in leaves_of(group)):
            raise KeyboardInterrupt from None
        raise
    if live:
        print(file=sys.stderr)
    table = node_table(result)
    print(table)
    killed = {n.index for n in result.nodes if n.killed_at is not None}
    sim_result = Result(
        plan=checked,
        rows=rows(result, args.rounds, sampled=sampled),
        crashed_ids=killed,
        wall_time=result.wall_time,
    )
    info = write_run(sim_result, out, plots=not args.no_plots)
    (out / "nodes.json").write_text(
        json.dumps(
            [
                {
                    "index": n.index,
                    "peer_id": n.peer_id,
                    "address": n.address,
                    "role": n.role,
                    "rounds": n.last.get("round", 0),
                    "accuracy": n.last.get("accuracy"),
                    "bytes_in": n.counter("bytes_in"),
                    "bytes_out": n.counter("bytes_out"),
                    "rejected": n.rejected,
                    "killed_at": n.killed_at,
                    "exit_code": n.exit_code,
                }
                for n in result.nodes
            ],
            indent=2,
        )
        + "\n"
    )
    (out / "table.txt").write_text(table + "\n")
    print(summary_table([info]))
    print(
        f"wrote {out}/ (config.toml, metrics.jsonl, summary.json, nodes.json, table.txt"
        f"{'' if args.no_plots else ', plots'}) in {result.wall_time:.1f} s"
    )
    for problem in result.problems:
        print(f"phalanx net up: error: {problem}", file=sys.stderr)
    if result.timed_out:
        print(f"phalanx net up: error: timed out after {args.timeout:g} s", file=sys.stderr)
    return 1 if result.timed_out or result.problems else 0
