"""Issue 18's figures: compressed exchange and differential privacy, measured side by side in one run.

    .venv/bin/python scripts/bench_compression.py [--parts abcd] [--rounds 150] [--threads 1]

a. bytes: bytes to reach 0.90 honest accuracy on the default MNIST workload (32 nodes, D-PSGD, regular:6,
   MLP, one local step a round) for each codec vs float32; accuracy after ``--rounds`` rounds;
b. robustness: honest accuracy under ALIE (z = 100) and IPM at 25% attackers with trimmed mean (f = 2) and
   clipped gossip (tau = 1), with and without each codec (32 nodes, regular:6, 5 local steps, 30 rounds);
c. privacy: honest accuracy at epsilon 1, 3, 8 (delta 1e-5, sigma calibrated over the run's rounds, clip
   ``--dp-clip``) for 32 nodes, without attackers (mean) and with 25% ALIE attackers (clipped gossip);
d. transport: the 4-peer exchange-and-average of a 1M-value (4 MB) model over real libp2p (127.0.0.1,
   TCP + Noise + yamux), each peer sending its model through its channel to the 3 others, receiving and
   decoding 3, and averaging; float32, int8 and topk:0.05 in the same run (median round, after the first).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import torch
import trio

from phalanx.gossip.compression import codec_from_spec
from phalanx.gossip.compression.channel import Channel
from phalanx.gossip.messages import Compressed, ModelUpdate, decode, encode
from phalanx.gossip.wire import Limits
from phalanx.sim.config import SimConfig
from phalanx.sim.experiment import plan, run

WORKLOAD: dict[str, Any] = {"nodes": 32, "topology": "regular:6", "dataset": "mnist", "eval_nodes": 8}
CODECS_A = ["", "fp16", "bf16", "int8", "topk:0.05", "topk:0.01", "randk:0.05", "lowrank:4"]
CODECS_B = ["", "int8", "topk:0.05", "topk:0.01", "lowrank:4"]


def _name(spec: str) -> str:
    return spec or "float32"


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |")
    print(flush=True)


def _go(**kw: Any) -> Any:
    return run(plan(SimConfig(**kw)))


# ---------------------------------------------------------------------------------------------- a


def part_a(rounds: int, threads: int) -> None:
    print(
        f"a. bytes to 0.90 honest accuracy: 32 nodes, D-PSGD, regular:6, MLP, {rounds} rounds, eval every 2"
    )
    results = {}
    for spec in CODECS_A:
        t = time.perf_counter()
        res = _go(**WORKLOAD, rounds=rounds, eval_every=2, compress=spec, threads=threads)
        evals = [r for r in res.rows if r.get("acc_mean") is not None]
        hit = next((r for r in evals if r["acc_mean"] >= 0.90), None)
        per_msg = res.rows[-1]["bytes"] / max(1, res.rows[-1]["messages"])
        results[spec] = (hit, evals[-1]["acc_mean"], per_msg, time.perf_counter() - t)
        print(f"  {_name(spec)}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    base_hit, base_acc = results[""][0], results[""][1]
    rows = []
    for spec, (hit, acc, per_msg, _) in results.items():
        if hit is None:
            reach = ["-", "not reached", "-"]
        else:
            ratio = base_hit["bytes"] / hit["bytes"] if base_hit else float("nan")
            reach = [str(hit["round"] + 1), f"{hit['bytes'] / 1e6:,.1f}", f"{ratio:.2f}x"]
        rows.append([_name(spec), f"{per_msg:,.0f}", *reach, f"{acc:.4f}", f"{100 * (acc - base_acc):+.2f}"])
    _table(
        [
            "codec",
            "bytes/message",
            "rounds to 0.90",
            "MB to 0.90",
            "fewer bytes",
            f"acc @{rounds}",
            "Δ points",
        ],
        rows,
    )


# ---------------------------------------------------------------------------------------------- b


def part_b(threads: int) -> None:
    print(
        "b. robustness: 25% attackers (8 of 32), regular:6, 5 local steps, 30 rounds; honest acc mean / min"
    )
    rules = [("trimmed-mean", {"f": 2}), ("clipped-gossip", {"tau": 1.0})]
    attacks = [("alie", {"z": 100.0}), ("ipm", {})]
    header = ["rule", "attack", *(_name(c) for c in CODECS_B)]
    rows = []
    for rule, rule_params in rules:
        for attack, attack_params in attacks:
            cells = []
            for spec in CODECS_B:
                res = _go(
                    **WORKLOAD,
                    rounds=30,
                    local_steps=5,
                    eval_every=10,
                    rule=rule,
                    rule_params=rule_params,
                    byzantine_fraction=0.25,
                    attack=attack,
                    attack_params=attack_params,
                    compress=spec,
                    threads=threads,
                )
                last = res.rows[-1]
                cells.append(f"{last['acc_mean']:.3f} / {last['acc_min']:.3f}")
                print(f"  {rule} {attack} {_name(spec)}: {cells[-1]}", file=sys.stderr, flush=True)
            rows.append([rule, attack, *cells])
    _table(header, rows)


# ---------------------------------------------------------------------------------------------- c


def part_c(threads: int, clip: float, rounds: int) -> None:
    print(
        f"c. privacy: 32 nodes, regular:6, 5 local steps, {rounds} rounds, clip C = {clip}, delta 1e-5; "
        "honest acc mean / min (sigma)"
    )
    settings = [
        ("no attackers, mean", {"rule": "mean"}),
        (
            "25% ALIE (z=100), clipped gossip",
            {
                "rule": "clipped-gossip",
                "rule_params": {"tau": 1.0},
                "byzantine_fraction": 0.25,
                "attack": "alie",
                "attack_params": {"z": 100.0},
            },
        ),
    ]
    eps_list = [0.0, 8.0, 3.0, 1.0]
    rows = []
    for label, extra in settings:
        cells = []
        for eps in eps_list:
            dp = {"dp_clip": clip, "dp_epsilon": eps} if eps else {}
            config = SimConfig(
                **WORKLOAD, rounds=rounds, local_steps=5, eval_every=rounds, threads=threads, **dp, **extra
            )
            sigma = config.channel_settings().privacy.sigma if eps else 0.0
            res = run(plan(config))
            last = res.rows[-1]
            spent = f", eps {last['dp_epsilon']:.2f}" if eps else ""
            cells.append(f"{last['acc_mean']:.3f} / {last['acc_min']:.3f} (σ {sigma:.2f}{spent})")
            print(f"  {label} eps={eps}: {cells[-1]}", file=sys.stderr, flush=True)
        rows.append([label, *cells])
    _table(["run", "no DP", "ε = 8", "ε = 3", "ε = 1"], rows)


# ---------------------------------------------------------------------------------------------- d

DIM = 1_000_000


async def _exchange_in_process(spec: str, rounds: int) -> list[float]:
    """The exchange among 4 libp2p hosts in this process (one thread: the 4 peers' CPU work adds up)."""
    from libp2p.crypto.ed25519 import create_new_key_pair

    from phalanx.node.transport import Frame, open_libp2p_transport

    limits = Limits(dim=DIM)
    n = 4
    codec = codec_from_spec(spec) if spec else None
    reference = torch.zeros(DIM)
    models = [torch.randn(DIM) for _ in range(n)]
    channels = [
        Channel(reference=reference, codec=codec, rng=torch.Generator().manual_seed(i)) if codec else None
        for i in range(n)
    ]
    times: list[float] = []
    async with trio.open_nursery() as outer:
        hosts = []
        from contextlib import AsyncExitStack

        async with AsyncExitStack() as stack:
            for _ in range(n):
                hosts.append(
                    await stack.enter_async_context(
                        open_libp2p_transport(create_new_key_pair(), limits=limits, send_timeout=30.0)
                    )
                )
            names = [[h.add_address(o.listen_addresses()[0]) for o in hosts] for h in hosts]

            async def peer_round(i: int, r: int, done: list[float], start: float) -> None:
                me, channel = hosts[i], channels[i]
                others = [j for j in range(n) if j != i]
                message = ModelUpdate(round=r, params=models[i])
                groups = (
                    channel.outgoing(message, [str(j) for j in others])
                    if channel
                    else [(message, [str(j) for j in others])]
                )
                async with trio.open_nursery() as sends:
                    for wire_message, group in groups:
                        body = encode(wire_message)
                        for j in group:
                            sends.start_soon(me.send, names[i][int(j)], body)
                    got = []
                    while len(got) < n - 1:
                        event = await me.receive()
                        if not isinstance(event, Frame):
                            continue
                        m = decode(event.body, limits)
                        if isinstance(m, Compressed):
                            assert channel is not None
                            m = channel.incoming(event.peer, m, limits)
                        assert isinstance(m, ModelUpdate) and m.round == r
                        got.append(m.params)
                models[i] = (models[i] + sum(got)) / n
                done.append(time.perf_counter() - start)

            for r in range(rounds + 1):
                done: list[float] = []
                start = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    for i in range(n):
                        nursery.start_soon(peer_round, i, r, done, start)
                if r:  # the first round opens the connections
                    times.append(max(done))
        outer.cancel_scope.cancel()
    return times


async def _send_retrying(transport: Any, peer: str, body: bytes) -> None:
    """Send, retrying while the peer's process is still starting (the first round only)."""
    from phalanx.node.transport import TransportError

    for _ in range(100):
        try:
            await transport.send(peer, body)
            return
        except TransportError:
            await trio.sleep(0.2)
    raise RuntimeError(f"could not reach {peer}")


async def _peer_process(index: int, spec: str, rounds: int, ports: list[int], keydir: str) -> None:
    """One peer of the exchange, in its own process: ``rounds + 1`` rounds, each a send to the 3 others, 3
    receives (decoded through the channel) and the average; prints the per-round seconds as JSON."""
    import json
    from pathlib import Path

    from phalanx.node.identity import load_or_create_key, peer_id_of
    from phalanx.node.transport import Frame, open_libp2p_transport

    limits = Limits(dim=DIM)
    n = len(ports)
    keys = [load_or_create_key(Path(keydir) / f"{i}.key") for i in range(n)]
    codec = codec_from_spec(spec) if spec else None
    channel = Channel(reference=torch.zeros(DIM), codec=codec, rng=torch.Generator().manual_seed(index))
    model = torch.randn(DIM, generator=torch.Generator().manual_seed(100 + index))
    times = []
    async with open_libp2p_transport(
        keys[index], listen=[f"/ip4/127.0.0.1/tcp/{ports[index]}"], limits=limits, send_timeout=60.0
    ) as me:
        others = [
            me.add_address(f"/ip4/127.0.0.1/tcp/{ports[j]}/p2p/{peer_id_of(keys[j])}")
            for j in range(n)
            if j != index
        ]
        early: list[tuple[str, Any]] = []  # frames of the next round that arrive before this one ends
        for r in range(rounds + 1):
            start = time.perf_counter()
            message = ModelUpdate(round=r, params=model)
            got = []
            async with trio.open_nursery() as sends:
                for wire_message, group in channel.outgoing(message, others):
                    body = encode(wire_message)
                    for peer in group:
                        sends.start_soon(_send_retrying, me, peer, body)
                pending, early = early, []
                while len(got) < n - 1:
                    if pending:
                        peer, m = pending.pop(0)
                    else:
                        event = await me.receive()
                        if not isinstance(event, Frame):
                            continue
                        peer, m = event.peer, decode(event.body, limits)
                    if isinstance(m, Compressed):
                        m = channel.incoming(peer, m, limits)
                    assert isinstance(m, ModelUpdate)
                    if m.round > r:
                        early.append((peer, m))
                        continue
                    got.append(m.params)
            model = (model + sum(got)) / n
            times.append(time.perf_counter() - start)
        await trio.sleep(1.0)  # let the others read our last frames before the connections close
    print(json.dumps(times[1:]), flush=True)


def _exchange_processes(spec: str, rounds: int) -> list[float]:
    """The exchange with 4 real processes; a round's time is the slowest peer's."""
    import json
    import subprocess
    import tempfile
    from pathlib import Path

    from phalanx.node.identity import load_or_create_key
    from phalanx.node.netup import free_ports

    ports = free_ports(4)
    with tempfile.TemporaryDirectory() as keydir:
        for i in range(4):
            load_or_create_key(Path(keydir) / f"{i}.key")
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--peer",
                    str(i),
                    "--spec",
                    spec or "float32",
                    "--exchange-rounds",
                    str(rounds),
                    "--ports",
                    ",".join(map(str, ports)),
                    "--keydir",
                    keydir,
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(4)
        ]
        outs = [p.communicate(timeout=300)[0] for p in procs]
    per_peer = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    return [max(column) for column in zip(*per_peer, strict=True)]


def part_d(rounds: int) -> None:
    print(
        f"d. 4-peer exchange-and-average of a 4 MB model (1M float32) over libp2p on 127.0.0.1, {rounds} rounds "
        "after a first (connecting) one; 4 processes; a round's time is its slowest peer's"
    )
    for where, exchange in (
        ("4 processes", _exchange_processes),
        ("one process, one thread", lambda spec, r: trio.run(_exchange_in_process, spec, r)),
    ):
        rows = []
        for spec in ["", "int8", "topk:0.05"]:
            times = exchange(spec, rounds)
            rows.append(
                [_name(spec), f"{statistics.median(times):.3f}", f"{min(times):.3f}", f"{max(times):.3f}"]
            )
            print(f"  {where} {_name(spec)}: {rows[-1][1]} s", file=sys.stderr, flush=True)
        print(f"  {where}:")
        _table(["codec", "median s/round", "min", "max"], rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="abcd")
    parser.add_argument("--rounds", type=int, default=150, help="rounds of part a")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dp-clip", type=float, default=1.0)
    parser.add_argument("--dp-rounds", type=int, default=30)
    parser.add_argument("--exchange-rounds", type=int, default=5)
    # one peer of part d (the script starts them)
    parser.add_argument("--peer", type=int, default=-1, help=argparse.SUPPRESS)
    parser.add_argument("--spec", default="", help=argparse.SUPPRESS)
    parser.add_argument("--ports", default="", help=argparse.SUPPRESS)
    parser.add_argument("--keydir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer >= 0:
        torch.set_num_threads(1)
        spec = "" if args.spec == "float32" else args.spec
        ports = [int(p) for p in args.ports.split(",")]
        trio.run(_peer_process, args.peer, spec, args.exchange_rounds, ports, args.keydir)
        return 0
    torch.set_num_threads(args.threads)
    if "a" in args.parts:
        part_a(args.rounds, args.threads)
    if "b" in args.parts:
        part_b(args.threads)
    if "c" in args.parts:
        part_c(args.threads, args.dp_clip, args.dp_rounds)
    if "d" in args.parts:
        part_d(args.exchange_rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
