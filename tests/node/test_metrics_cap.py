"""The metrics server under a slow-socket flood: it holds at most ``max_connections`` sockets at once (the
rest wait in the kernel's backlog, costing the process no descriptor) and serves again once they go."""

from __future__ import annotations

import json
import os
from functools import partial

import trio
import trio.testing

from phalanx.node.metrics import Metrics, fetch, serve

CAP = 8
SLOW = 120


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_slow_sockets_cannot_take_more_than_the_cap() -> None:
    metrics = Metrics(peer_id="me")
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve, max_connections=CAP, request_timeout=30.0), metrics, 0)
        before = open_fds()
        slow = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(SLOW)]
        await trio.testing.wait_all_tasks_blocked(0.05)  # the server has accepted all it is going to
        server_side = open_fds() - before - SLOW
        assert server_side <= CAP, f"the server holds {server_side} sockets for {SLOW} slow clients"
        for s in slow:
            await s.aclose()
        assert json.loads(await fetch(port, "/status"))["peer_id"] == "me"
        nursery.cancel_scope.cancel()
