"""Transport benchmark: raw py-libp2p stream throughput vs a full model transfer, and D-PSGD round time with
real processes vs the simulator.

    .venv/bin/python scripts/bench_transport.py [--repeats 5] [--nodes 8] [--rounds 6]

1. raw: one 4 MB write on a py-libp2p stream (TCP + Noise + yamux) between two hosts on 127.0.0.1, timed
   until the receiver has read all of it;
2. model: a ModelUpdate of 1,000,000 float32 through phalanx's transport — encode, frame, send, read the
   frame under limits, decode and validate (dimension, finiteness) — timed from encode to validated tensor;
3. round: the wall time of one D-PSGD round (MLP, one local step, ring) with N real node processes
   (`phalanx net up`), against the simulator's wall time per round for the same config.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import trio

from phalanx.gossip.messages import ModelUpdate, decode, encode
from phalanx.gossip.wire import Limits
from phalanx.node.transport import Frame, open_libp2p_transport

PAYLOAD = 4_000_000
DIM = 1_000_000


async def raw_stream(repeats: int) -> list[float]:
    import multiaddr
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.custom_types import TProtocol
    from libp2p.network.stream.exceptions import StreamEOF
    from libp2p.peer.peerinfo import info_from_p2p_addr

    proto = TProtocol("/bench/raw/1")
    got = trio.Semaphore(0)

    async def handler(stream: object) -> None:
        received = 0
        while True:
            try:
                chunk = await stream.read(1 << 20)  # type: ignore[attr-defined]
            except StreamEOF:
                return
            if not chunk:
                return
            received += len(chunk)
            while received >= PAYLOAD:
                received -= PAYLOAD
                got.release()

    a, b = new_host(key_pair=create_new_key_pair()), new_host(key_pair=create_new_key_pair())
    b.set_stream_handler(proto, handler)
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    times = []
    async with a.run(listen), b.run(listen):
        await a.connect(info_from_p2p_addr(b.get_addrs()[0]))
        stream = await a.new_stream(b.get_id(), [proto])
        payload = b"\x5a" * PAYLOAD
        for i in range(repeats + 1):
            t = time.perf_counter()
            await stream.write(payload)
            await got.acquire()
            if i:  # the first transfer warms up yamux windows and allocations
                times.append(time.perf_counter() - t)
        await stream.close()
    return times


async def model_transfer(repeats: int) -> list[float]:
    from libp2p.crypto.ed25519 import create_new_key_pair

    limits = Limits(dim=DIM)
    vector = torch.randn(DIM)
    times = []
    async with (
        open_libp2p_transport(create_new_key_pair(), limits=limits) as a,
        open_libp2p_transport(create_new_key_pair(), limits=limits) as b,
    ):
        name = a.add_address(b.listen_addresses()[0])
        for i in range(repeats + 1):
            t = time.perf_counter()
            await a.send(name, encode(ModelUpdate(round=i, params=vector)))
            while True:
                event = await b.receive()
                if isinstance(event, Frame):
                    break
            message = decode(event.body, limits)
            assert isinstance(message, ModelUpdate) and message.params.shape == (DIM,)
            if i:
                times.append(time.perf_counter() - t)
    return times


def real_round_time(nodes: int, rounds: int, workdir: Path) -> tuple[float, float]:
    """(median seconds per round over nodes and rounds 2..R, total wall seconds) with real processes."""
    from phalanx.node.netup import NetSpec, run_network

    edges = [(i, (i + 1) % nodes) for i in range(nodes)]
    spec = NetSpec(
        n=nodes,
        edges=edges,
        rounds=rounds,
        workdir=workdir,
        timeout=300,
        node_args=[
            "--dataset",
            "mnist",
            "--model",
            "mlp",
            "--local-steps",
            "1",
            "--eval-every",
            "0",
            "--round-timeout",
            "30",
        ],
    )
    result = trio.run(run_network, spec)
    gaps = []
    for node in result.nodes:
        ts = [e["t"] for e in node.rounds]
        gaps += [b - a for a, b in itertools.pairwise(ts[1:])]  # skip round 1 (start-up, first dials)
    return statistics.median(gaps), result.wall_time


def sim_round_time(nodes: int, rounds: int) -> float:
    from phalanx.sim.config import from_mapping
    from phalanx.sim.experiment import plan, run

    def config(r: int) -> Any:
        return from_mapping(
            {
                "nodes": nodes,
                "rounds": r,
                "topology": "ring",
                "mixing": "uniform",
                "dataset": "mnist",
                "model": "mlp",
                "local_steps": 1,
                "eval_every": r,
            }
        )

    run(plan(config(1)))  # warm-up: first-use costs (thread pools, allocations) are not a round's cost
    checked = plan(config(rounds))
    t = time.perf_counter()
    run(checked)
    return (time.perf_counter() - t) / rounds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()

    # Alternate the two measurements (three sessions each) so that load from elsewhere hits both alike.
    raw_times: list[float] = []
    model_times: list[float] = []
    for _ in range(3):
        raw_times += trio.run(raw_stream, args.repeats)
        model_times += trio.run(model_transfer, args.repeats)
    raw, model = statistics.median(raw_times), statistics.median(model_times)
    best = min(raw_times) / min(model_times)
    raw_mbs, model_mbs = PAYLOAD / raw / 1e6, (4 * DIM) / model / 1e6
    print(f"medians of {len(raw_times)} transfers each")
    print(f"raw py-libp2p stream, 4 MB:                {raw * 1e3:8.1f} ms   {raw_mbs:7.1f} MB/s")
    print(
        f"model transfer, 1,000,000 float32 (4 MB): {model * 1e3:8.1f} ms   {model_mbs:7.1f} MB/s"
        f"   = {model_mbs / raw_mbs:.0%} of raw (target >= 70%; best of each: {best:.0%})"
    )
    with tempfile.TemporaryDirectory() as tmp:
        real, wall = real_round_time(args.nodes, args.rounds, Path(tmp))
    sim = sim_round_time(args.nodes, args.rounds)
    print(
        f"D-PSGD round, {args.nodes} real processes (ring, MLP, 1 step): {real * 1e3:8.1f} ms per round "
        f"(whole run {wall:.1f} s incl. start-up)"
    )
    print(f"D-PSGD round, simulator, same config:              {sim * 1e3:8.1f} ms per round")
    print(
        json.dumps(
            {
                "raw_MBps": round(raw_mbs, 1),
                "model_MBps": round(model_mbs, 1),
                "ratio": round(model_mbs / raw_mbs, 3),
                "ratio_best": round(best, 3),
                "real_round_ms": round(real * 1e3, 1),
                "sim_round_ms": round(sim * 1e3, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
