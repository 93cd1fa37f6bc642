"""Added latency for the test bed, in user space: a TCP relay that holds every chunk for a fixed delay.

This kernel has no ``netem``, so latency comes from a relay: it listens on ``HOST:PORT`` and forwards each
connection to ``TARGET``, and each direction delivers every chunk ``delay`` seconds after it was read (order
kept, no extra bandwidth limit: a reader keeps reading while earlier chunks wait). Run one inside a host's
namespace in front of its node (``--listen 10.x.y.i:4101 --to 127.0.0.1:4001``) and give the others that
address: every connection to the node then sees the delay both ways.

    python -m tests.netbed.delay --listen 10.1.2.3:4101 --to 127.0.0.1:4001 --delay 0.05
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from typing import Any

import trio


async def _pipe(source: trio.SocketStream, sink: trio.SocketStream, delay: float) -> None:
    send, recv = trio.open_memory_channel[tuple[float, bytes]](math.inf)

    async def read() -> None:
        async with send:
            while chunk := await source.receive_some(65536):
                send.send_nowait((trio.current_time() + delay, chunk))

    async def write() -> None:
        async with recv:
            async for due, chunk in recv:
                await trio.sleep_until(due)
                await sink.send_all(chunk)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await sink.send_eof()

    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            nursery.start_soon(write)


async def relay(
    listen: tuple[str, int],
    target: tuple[str, int],
    delay: float,
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``task_status`` gets the bound port."""

    async def handle(inbound: trio.SocketStream) -> None:
        try:
            outbound = await trio.open_tcp_stream(*target)
        except OSError:
            await inbound.aclose()
            return
        async with inbound, outbound, trio.open_nursery() as nursery:
            nursery.start_soon(_pipe, inbound, outbound, delay)
            nursery.start_soon(_pipe, outbound, inbound, delay)

    listeners = await trio.open_tcp_listeners(listen[1], host=listen[0])
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", type=_endpoint, required=True, metavar="HOST:PORT")
    p.add_argument("--to", type=_endpoint, required=True, metavar="HOST:PORT")
    p.add_argument("--delay", type=float, required=True, help="seconds added each way")
    args = p.parse_args(argv)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(relay, args.listen, args.to, args.delay)
            print("ready", flush=True)

    trio.run(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
