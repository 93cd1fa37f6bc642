"""What the transport's budgets cost a model transfer: the frame reader with and without its ledger, side by
side in one run.

    .venv/bin/python scripts/bench_budgets.py [--repeats 20] [--dim 1000000]

``read_frames`` (node/transport.py) reads frames of one ModelUpdate of ``dim`` float32 from an in-memory
stream, with the node's ledger (per-peer and global budgets, a stranger budget and ``is_known``, as a node
runs it) and without one (``ledger=None``: what the reader did before budgets). The libp2p stream, Noise and
decoding cost the same in both and are left out, so the ratio is the budgets' share of the reader alone: an
upper bound on their share of ``scripts/bench_transport.py``'s model transfer, which adds those costs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial

import torch
import trio
import trio.testing

from phalanx.gossip.messages import ModelUpdate, encode
from phalanx.gossip.wire import Limits, frame
from phalanx.node.transport import STRANGER_BUDGET, Acquaintances, Ledger, PeerBudget, read_frames


async def once(data: bytes, limits: Limits, ledger: Ledger | None) -> float:
    """Seconds from the first byte written to the frame handed on (the memory stream's copies included)."""
    send, recv = trio.testing.memory_stream_one_way_pair()
    got = trio.Event()

    async def emit(event: object) -> None:
        got.set()

    async def read_some(n: int) -> bytes:
        return bytes(await recv.receive_some(n))

    async with trio.open_nursery() as nursery:
        t = time.perf_counter()
        nursery.start_soon(partial(read_frames, read_some, "peer", emit, limits=limits, ledger=ledger))
        await send.send_all(data)
        await got.wait()
        elapsed = time.perf_counter() - t
        nursery.cancel_scope.cancel()
    return elapsed


async def bench(repeats: int, dim: int) -> None:
    limits = Limits.model_only(dim)
    data = frame(encode(ModelUpdate(round=1, params=torch.randn(dim))))
    known = Acquaintances()
    known.meet(["peer"])
    with_ledger: list[float] = []
    without: list[float] = []
    for _ in range(repeats):  # interleaved: the machine's load hits both alike
        ledger = Ledger(PeerBudget(), limits, stranger=STRANGER_BUDGET, is_known=known)
        with_ledger.append(await once(data, limits, ledger))
        without.append(await once(data, limits, None))
    a, b = statistics.median(with_ledger), statistics.median(without)
    mb = len(data) / 1e6
    print(f"frame of {mb:.1f} MB (ModelUpdate, {dim:,} float32), median of {repeats}, interleaved")
    print(f"{'reader':>16}  {'ms':>8}  {'MB/s':>8}")
    print(f"{'with budgets':>16}  {a * 1e3:8.2f}  {mb / a:8.0f}")
    print(f"{'without':>16}  {b * 1e3:8.2f}  {mb / b:8.0f}")
    print(f"budgets' cost: {100 * (a / b - 1):+.1f}% of the reader's time")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--dim", type=int, default=1_000_000)
    args = parser.parse_args()
    if args.repeats < 1 or args.dim < 1:
        print("bench_budgets: --repeats and --dim must be >= 1", file=sys.stderr)
        return 2
    trio.run(bench, args.repeats, args.dim)
    return 0


if __name__ == "__main__":
    sys.exit(main())
