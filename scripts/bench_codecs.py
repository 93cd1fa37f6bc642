"""Encode and decode time, bytes and error of every codec, against plain float32, on two model sizes.

    python scripts/bench_codecs.py [--repeats 5] [--threads 1] [--codecs fp16,int8,...]

Models: a 1,000,000-value vector laid out as one 1000 x 1000 matrix, and the default MLP's 50,890
parameters (784-64-10: shapes (64, 784), (64,), (10, 64), (10,)). Inputs are standard normal. Each codec
starts from a fresh state, is warmed up once, then timed ``--repeats`` times (median reported). Bytes are
those msgpack writes for the whole :class:`Encoded` map (payload and envelope); the float32 baseline is one
msgpack ``bin`` of 4 d bytes. The error is ``||decode(encode(x)) - x|| / ||x||`` of the first message
(for error-feedback codecs the rest is not lost: it waits in the residual). One torch thread by default:
on a shared machine more threads mostly measure the neighbours' load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import msgpack
import torch

from phalanx.gossip.compression import Layout, codec_from_spec, new_state

DEFAULT_CODECS = "fp16,bf16,int8,topk:0.01,topk:0.05,randk:0.01,lowrank:4,seeds:256"
MODELS = {
    "1M (1000x1000)": Layout.of([(1000, 1000)]),
    "MLP 50,890": Layout.of([(64, 784), (64,), (10, 64), (10,)]),
}


def _median_ms(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def bench(
    layout: Layout, specs: list[str], repeats: int
) -> list[tuple[str, float, float, int, float, float]]:
    dim = layout.dim
    g = torch.Generator().manual_seed(0)
    x = torch.randn(dim, generator=g)
    base = len(msgpack.packb({"p": x.numpy().tobytes()}, use_bin_type=True))
    rows = [("float32", 0.0, 0.0, base, 1.0, 0.0)]
    for spec in specs:
        codec = codec_from_spec(spec, layout=layout)
        state = new_state()
        first = codec.encode(x, state, g)
        err = float((codec.decode(first, dim) - x).norm() / x.norm())
        size = len(msgpack.packb(first.to_fields(), use_bin_type=True))
        enc_ms = _median_ms(lambda c=codec: c.encode(x, new_state(), g), repeats)
        dec_ms = _median_ms(lambda c=codec, e=first: c.decode(e, dim), repeats)
        rows.append((codec.spec, enc_ms, dec_ms, size, base / size, err))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--codecs", default=DEFAULT_CODECS, help="comma-separated codec specs")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = [s for s in args.codecs.split(",") if s]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}"
    )
    for name, layout in MODELS.items():
        print(f"\n{name}: d = {layout.dim:,}")
        print("| codec | encode ms | decode ms | bytes | vs float32 | rel. error |")
        print("|---|---:|---:|---:|---:|---:|")
        for spec, enc, dec, size, ratio, err in bench(layout, specs, args.repeats):
            times = "| - | - |" if spec == "float32" else f"| {enc:.2f} | {dec:.2f} |"
            print(f"| {spec} {times} {size:,} | {ratio:.2f}x | {err:.3g} |")


if __name__ == "__main__":
    main()
