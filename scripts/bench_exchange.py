"""The 4-peer full exchange of a 4 MB model over real py-libp2p: round time, and where it goes.

    .venv/bin/python scripts/bench_exchange.py [--peers 4] [--dim 1000000] [--rounds 12] [--profile]

P processes (one per peer, as real nodes are), each with phalanx's transport (TCP + Noise + yamux, the
framing and limits of ``phalanx node run``), fully connected. A round: every peer encodes its model as a
``ModelUpdate``, sends it to the P-1 others concurrently, reads and decodes the P-1 models of the round and
averages them with its own. The round time is the slowest peer's time from its round start to holding the
average (peers start each round when they hold the previous one: the barrier is the data itself). The first
two rounds (dials, yamux window growth) are not counted. Variants, measured side by side in one run:

- ``noise``: what ``phalanx node run`` does (Noise, yamux with 1 MiB send frames: node/libp2p_tuning.py);
- ``frame=K``: the same with K KiB yamux send frames (``frame=64``: py-libp2p's own default);
- ``plain``: 1 MiB frames without encryption (py-libp2p's insecure transport; for the profile only, never a
  setting).

``--profile`` writes a cProfile of peer 0 (default variant) to ``bench_exchange.prof`` and prints its top 25.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time
from typing import Any

import torch
import trio

from phalanx.gossip.messages import ModelUpdate, decode, encode
from phalanx.gossip.wire import Limits


async def _peer(index: int, peers: int, dim: int, rounds: int, variant: str, conn: Any) -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair

    from phalanx.node.transport import Frame, open_libp2p_transport

    if variant == "plain":  # swap the host's security for py-libp2p's insecure one (profile only)
        import libp2p
        from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport

        plain = libp2p.new_host

        def new_host(**kw: Any) -> Any:
            return plain(sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(kw["key_pair"])}, **kw)

        libp2p.new_host = new_host
    limits = Limits(dim=dim)
    async with open_libp2p_transport(create_new_key_pair(), limits=limits) as transport:
        if variant.startswith("frame="):  # after the transport's own tuning: the yamux send frame, KiB
            from libp2p.stream_muxer.yamux import yamux

            yamux.MAX_MESSAGE_SIZE = int(variant.split("=")[1]) * 1024
        conn.send(transport.listen_addresses()[0])
        addresses: list[str] = conn.recv()
        others = [transport.add_address(a) for i, a in enumerate(addresses) if i != index]
        generator = torch.Generator().manual_seed(index)
        model = torch.randn(dim, generator=generator)
        early: dict[int, list[torch.Tensor]] = {}
        times = []
        for r in range(rounds):
            start = time.perf_counter()
            body = encode(ModelUpdate(round=r, params=model))
            async with trio.open_nursery() as nursery:
                for other in others:
                    nursery.start_soon(transport.send, other, body)
                got = early.pop(r, [])
                while len(got) < peers - 1:
                    event = await transport.receive()
                    if not isinstance(event, Frame):
                        continue
                    message = decode(event.body, limits)
                    assert isinstance(message, ModelUpdate)
                    if message.round == r:
                        got.append(message.params)
                    else:
                        early.setdefault(message.round, []).append(message.params)
            model = torch.stack([model, *got]).mean(dim=0)
            times.append(time.perf_counter() - start)
        conn.send(times)
        conn.recv()  # stay up until every peer is done (others may still be reading from us)


def _child(index: int, peers: int, dim: int, rounds: int, variant: str, conn: Any, profile: str) -> None:
    torch.set_num_threads(1)
    if profile:
        import cProfile

        cProfile.runctx(
            "trio.run(_peer, index, peers, dim, rounds, variant, conn)", globals(), locals(), profile
        )
    else:
        trio.run(_peer, index, peers, dim, rounds, variant, conn)


def exchange(peers: int, dim: int, rounds: int, variant: str, profile: str = "") -> list[float]:
    """Per-round times (the slowest peer's), first two rounds dropped."""
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    for i in range(peers):
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=_child, args=(i, peers, dim, rounds, variant, child, profile if i == 0 else "")
        )
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    addresses = [p.recv() for p in pipes]
    for p in pipes:
        p.send(addresses)
    per_peer = [p.recv() for p in pipes]
    for p in pipes:
        p.send("done")
    for proc in procs:
        proc.join(30)
    return [max(ts[r] for ts in per_peer) for r in range(2, rounds)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--dim", type=int, default=1_000_000, help="model size in float32 (1M = 4 MB)")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--sessions", type=int, default=2, help="alternated sessions per variant")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-variant", default="noise")
    parser.add_argument(
        "--variants", default="frame=64,noise,plain", help="comma-separated: noise, plain, frame=KIB"
    )
    args = parser.parse_args()
    if args.profile:
        exchange(args.peers, args.dim, args.rounds, args.profile_variant, "bench_exchange.prof")
        import pstats

        pstats.Stats("bench_exchange.prof").sort_stats("cumulative").print_stats(25)
        pstats.Stats("bench_exchange.prof").sort_stats("tottime").print_stats(25)
        return 0
    results: dict[str, list[float]] = {v: [] for v in args.variants.split(",")}
    for _ in range(args.sessions):
        for name in results:
            results[name] += exchange(args.peers, args.dim, args.rounds, name)
    mb = args.dim * 4 / 1e6
    print(f"{args.peers}-peer full exchange + average of a {mb:.1f} MB model, real processes, 127.0.0.1")
    print(f"{'variant':<8} {'median s/round':>15} {'best':>8} {'rounds':>7}")
    for name, ts in results.items():
        print(f"{name:<8} {statistics.median(ts):15.3f} {min(ts):8.3f} {len(ts):7d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
