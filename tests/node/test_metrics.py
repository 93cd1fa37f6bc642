from __future__ import annotations

import json

import pytest
import trio

from phalanx.node.metrics import Metrics, fetch, serve


async def test_endpoints_serve_status_and_prometheus_text() -> None:
    metrics = Metrics(peer_id="me", round=3, rounds_completed=3, accuracy=0.5, bytes_in=10)
    metrics.reject("malformed")
    metrics.reject("malformed")
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve, metrics, 0)
        status = json.loads(await fetch(port, "/status"))
        assert status["round"] == 3 and status["rejected"] == {"malformed": 2} and status["accuracy"] == 0.5
        text = (await fetch(port, "/metrics")).decode()
        assert 'phalanx_messages_rejected_total{reason="malformed"} 2' in text
        assert "phalanx_rounds_completed_total 3" in text
        with pytest.raises(OSError, match="404"):
            await fetch(port, "/nope")
        # a client that sends garbage and one that says nothing do not hurt the server
        s = await trio.open_tcp_stream("127.0.0.1", port)
        await s.send_all(b"\x00\xff garbage\r\n\r\n")
        assert (await s.receive_some(100)).startswith(b"HTTP/1.0 400")
        await s.aclose()
        assert json.loads(await fetch(port, "/status"))["peer_id"] == "me"
        nursery.cancel_scope.cancel()


def test_counters_survive_restore() -> None:
    m = Metrics(bytes_out=7, rounds_completed=2)
    m.reject("stale")
    fresh = Metrics()
    fresh.restore(m.counters())
    assert fresh.counters() == m.counters()
