"""The bed's latency relay: every byte arrives ``delay`` later each way, in order, and closes cleanly.
Runs on 127.0.0.1 on the real clock (an autojump clock would jump while bytes are in the kernel)."""

from __future__ import annotations

import trio

from .delay import relay


async def _echo(stream: trio.SocketStream) -> None:
    async with stream:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)


async def test_relay_delays_each_direction_and_keeps_order() -> None:
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        echo_port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, _echo, listeners)
        port = await nursery.start(relay, ("127.0.0.1", 0), ("127.0.0.1", echo_port), 0.05)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        payload = bytes(range(256)) * 4096  # 1 MiB, many chunks
        start = trio.current_time()
        got = bytearray()
        async with stream, trio.open_nursery() as inner:
            inner.start_soon(stream.send_all, payload)
            while len(got) < len(payload):
                chunk = await stream.receive_some(65536)
                if not got:
                    first = trio.current_time() - start
                got += chunk
        assert bytes(got) == payload
        assert 0.1 <= first < 2  # 50 ms there (relay -> echo) and 50 ms back (echo -> relay)
        nursery.cancel_scope.cancel()
