"""Time every robust rule and pre-aggregator as a multiple of ``updates.mean(dim=0)``.

    python scripts/bench_aggregation.py [--device cpu|cuda] [--n 32] [--d 1000000] [--f 8] [--thp]

All entries and the mean are timed on the same (n, d) standard-normal input, after one warm-up
call each. Every timed call of an entry is paired with a call of ``updates.mean(dim=0)`` made
just before it, and the ratio reported is the median over rounds of these paired ratios, so
that load from other processes hits both sides of a ratio alike. The load average is printed. Gossip rules and MoNNA aggregate rows 1..n-1 around row 0
with uniform mixing weights 1/n. Targets are those of issue 3 at n=32, f=8, d=1e6, float32.

``--thp`` sets ``THP_MEM_ALLOC_ENABLE=1`` before torch is imported: torch then backs large CPU
allocations with transparent huge pages, which halves the page-fault cost of the (n, d) outputs
of pre-aggregators (NNM, bucketing, clipping).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

if "--thp" in sys.argv:  # read by torch's CPU allocator at its first allocation
    os.environ["THP_MEM_ALLOC_ENABLE"] = "1"

import torch
from torch import Tensor

from phalanx.aggregation import (
    GOSSIP_RULES,
    PRE_AGGREGATORS,
    PRE_PARAMS,
    RULE_PARAMS,
    RULES,
    aggregate,
    max_f,
    pre_aggregate,
)

#: Issue 3's targets, as multiples of the mean's time.
TARGETS: dict[str, float] = {
    "krum": 3.0,
    "multi-krum": 3.0,
    "nnm": 10.0,
    "geometric-median": 5.0,
    "centered-clipping": 5.0,
    "median": 20.0,
    "trimmed-mean": 20.0,
    "bulyan": 25.0,
}


def _entries(x: Tensor, f: int) -> tuple[dict[str, Callable[[], Tensor]], dict[str, int]]:
    """Timed closures by name, and the f each one runs with where the requested f is too
    large for it (Bulyan needs n >= 4f + 3: f = 7 at n = 32)."""
    n = x.shape[0]
    own, neighbours = x[0], x[1:]
    weights = torch.full((n - 1,), 1.0 / n, dtype=x.dtype, device=x.device)
    radius = float(torch.linalg.vector_norm(x[1] - x[0]))  # a typical distance between rows
    entries: dict[str, Callable[[], Tensor]] = {"mean (baseline)": partial(torch.mean, x, dim=0)}
    reduced: dict[str, int] = {}
    for name in RULES:
        rows = neighbours if name in GOSSIP_RULES else x
        shared: dict[str, Any] = {"f": f, "tau": radius / 2, "own": own, "weights": weights}
        params = {k: v for k, v in shared.items() if k in RULE_PARAMS[name]}
        if name not in GOSSIP_RULES:
            params.pop("weights", None)
        if "f" in params and max_f(name, rows.shape[0]) < f:
            params["f"] = reduced[name] = max_f(name, rows.shape[0])
        entries[name] = partial(aggregate, name, rows, **params)
    for name in PRE_AGGREGATORS:
        shared = {"f": f, "s": 2, "seed": 0, "tau": float(torch.linalg.vector_norm(x, dim=1).median())}
        params = {k: v for k, v in shared.items() if k in PRE_PARAMS[name]}
        entries[name] = partial(pre_aggregate, x, [name], **params)
    return entries, reduced


def _timer(device: torch.device) -> Callable[[Callable[[], Tensor]], float]:
    def run(fn: Callable[[], Tensor]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--d", type=int, default=1_000_000)
    parser.add_argument("--f", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7, help="timed calls per entry (median kept)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--only", nargs="*", help="time only these entries (and the mean)")
    parser.add_argument(
        "--thp", action="store_true", help="transparent huge pages for torch's CPU allocations"
    )
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device available")
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(args.n, args.d, generator=gen, dtype=getattr(torch, args.dtype)).to(device)
    entries, reduced = _entries(x, args.f)
    if args.only:
        entries = {k: v for k, v in entries.items() if k in args.only or k == "mean (baseline)"}
    timer = _timer(device)
    baseline = entries["mean (baseline)"]
    for fn in entries.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in entries}
    ratios: dict[str, list[float]] = {name: [] for name in entries}
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        for name, fn in entries.items():
            base = timer(baseline)
            times[name].append(timer(fn))
            ratios[name].append(times[name][-1] / base)
    load_after = os.getloadavg()[0]
    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(
        f"n={args.n} d={args.d} f={args.f} {args.dtype} device={device} torch threads={threads} "
        f"rounds={args.rounds} thp={'on' if args.thp else 'off'} load average {load_before:.1f} -> {load_after:.1f}"
    )
    print(f"| {'rule':<26} | {'ms':>9} | {'x mean':>7} | {'target':>6} | {'':4} |")
    print(f"|{'-' * 28}|{'-' * 10}:|{'-' * 8}:|{'-' * 7}:|{'-' * 6}|")
    for name in entries:
        t = statistics.median(times[name])
        ratio = statistics.median(ratios[name])
        target = TARGETS.get(name)
        verdict = "" if target is None else ("pass" if ratio <= target else "FAIL")
        shown = "" if target is None else f"{target:g}"
        label = f"{name} (f={reduced[name]})" if name in reduced else name
        print(f"| {label:<26} | {t * 1e3:9.1f} | {ratio:7.2f} | {shown:>6} | {verdict:4} |")


if __name__ == "__main__":
    main()
