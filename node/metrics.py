"""A node's counters, served as Prometheus text (``/metrics``) and a small JSON status (``/status``).

The HTTP server is deliberately tiny: HTTP/1.0, GET only, one request per connection, a request head of at
most 4 KiB read under a timeout. It is for a scraper on the same machine or cluster, not the open web.
It holds at most ``max_connections`` sockets at once: further connections wait in the kernel's listen
backlog (no file descriptor of this process) until a slot frees, so a flood of slow sockets cannot take
the descriptors libp2p needs.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

MAX_REQUEST = 4096
REQUEST_TIMEOUT = 5.0  # seconds to read a request head, and again to write the reply
MAX_CONNECTIONS = 16  # sockets the server holds at once


@dataclass(slots=True)
class Metrics:
    peer_id: str = ""
    protocol: str = ""
    round: int = 0
    rounds_completed: int = 0
    accuracy: float = math.nan
    loss: float = math.nan
    bytes_in: int = 0
    bytes_out: int = 0
    messages_in: int = 0
    messages_out: int = 0
    send_failures: int = 0
    peers: int = 0
    banned: int = 0
    byzantine: str = ""
    finished: bool = False
    listen: list[str] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)
    # the protocol's own counters (rule failures, dropped rows, rejections by reason): Protocol.stats
    protocol_stats: Callable[[], dict[str, float]] | None = None

    def protocol_counters(self) -> dict[str, float]:
        return dict(sorted(self.protocol_stats().items())) if self.protocol_stats is not None else {}

    def reject(self, reason: str, count: int = 1) -> None:
        self.rejected[reason] += count

    def counters(self) -> dict[str, int]:
        """What a checkpoint keeps so that counters continue across a restart."""
        out = {
            "rounds_completed": self.rounds_completed,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
            "send_failures": self.send_failures,
        }
        out.update({f"rejected:{k}": v for k, v in self.rejected.items()})
        return out

    def restore(self, counters: dict[str, int]) -> None:
        for key, value in counters.items():
            if key.startswith("rejected:"):
                self.rejected[key.removeprefix("rejected:")] = value
            elif key in {
                "rounds_completed",
                "bytes_in",
                "bytes_out",
                "messages_in",
                "messages_out",
                "send_failures",
            }:
                setattr(self, key, value)

    def status(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "protocol": self.protocol,
            "round": self.round,
            "rounds_completed": self.rounds_completed,
            "accuracy": None if math.isnan(self.accuracy) else self.accuracy,
            "loss": None if math.isnan(self.loss) else self.loss,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
            "send_failures": self.send_failures,
            "rejected": dict(self.rejected),
            "peers": self.peers,
            "banned": self.banned,
            "byzantine": self.byzantine or None,
            "finished": self.finished,
            "listen": self.listen,
            "protocol_counters": self.protocol_counters(),
        }

    def prometheus(self) -> str:
        def line(name: str, kind: str, help_text: str, value: float, labels: str = "") -> list[str]:
            return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name}{labels} {value}"]

        out: list[str] = []
        out += line(
            "phalanx_rounds_completed_total", "counter", "Rounds this node completed.", self.rounds_completed
        )
        out += line("phalanx_round", "gauge", "Last round completed.", self.round)
        out += line("phalanx_accuracy", "gauge", "Test accuracy after the last round.", self.accuracy)
        out += line("phalanx_loss", "gauge", "Test loss after the last round.", self.loss)
        out += line(
            "phalanx_bytes_received_total", "counter", "Frame bytes received from peers.", self.bytes_in
        )
        out += line("phalanx_bytes_sent_total", "counter", "Frame bytes sent to peers.", self.bytes_out)
        out += line(
            "phalanx_messages_received_total", "counter", "Valid messages received.", self.messages_in
        )
        out += line("phalanx_messages_sent_total", "counter", "Messages sent.", self.messages_out)
        out += line(
            "phalanx_send_failures_total", "counter", "Sends that failed or timed out.", self.send_failures
        )
        out += line("phalanx_peers", "gauge", "Connected peers.", self.peers)
        out += line("phalanx_banned_peers", "gauge", "Peers currently banned.", self.banned)
        out += [
            "# HELP phalanx_messages_rejected_total Messages rejected, by reason.",
            "# TYPE phalanx_messages_rejected_total counter",
        ]
        for reason, count in sorted(self.rejected.items()):
            out.append(f'phalanx_messages_rejected_total{{reason="{reason}"}} {count}')
        out += [
            "# HELP phalanx_protocol_counter The protocol's own counters (rule failures, dropped rows, ...).",
            "# TYPE phalanx_protocol_counter gauge",
        ]
        for name, value in self.protocol_counters().items():
            out.append(f'phalanx_protocol_counter{{name="{name}"}} {value}')
        return "\n".join(out) + "\n"


def _response(status: str, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


async def _handle(stream: trio.SocketStream, metrics: Metrics, timeout: float = REQUEST_TIMEOUT) -> None:
    data = b""
    with trio.move_on_after(timeout):
        while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) < MAX_REQUEST:
            chunk = await stream.receive_some(MAX_REQUEST)
            if not chunk:
                break
            data += chunk
    parts = data.split(b"\r\n", 1)[0].split(b"\n", 1)[0].split()
    if len(parts) < 2 or parts[0] != b"GET":
        reply = _response("400 Bad Request", "text/plain", b"bad request\n")
    else:
        path = parts[1].split(b"?", 1)[0]
        if path == b"/metrics":
            reply = _response("200 OK", "text/plain; version=0.0.4", metrics.prometheus().encode())
        elif path in (b"/status", b"/"):
            reply = _response("200 OK", "application/json", json.dumps(metrics.status()).encode())
        else:
            reply = _response("404 Not Found", "text/plain", b"not found\n")
    try:
        with trio.move_on_after(timeout):
            await stream.send_all(reply)
    except trio.BrokenResourceError:
        pass
    finally:
        await stream.aclose()


async def serve(
    metrics: Metrics,
    port: int,
    *,
    host: str = "127.0.0.1",
    on_ready: Callable[[int], None] | None = None,
    max_connections: int = MAX_CONNECTIONS,
    request_timeout: float = REQUEST_TIMEOUT,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics`` and ``/status`` on ``host:port`` (0 picks a free port) until cancelled, holding
    at most ``max_connections`` sockets at once, each for at most twice ``request_timeout``."""
    if max_connections < 1 or not request_timeout > 0:
        raise ValueError("metrics server: max_connections must be >= 1 and request_timeout > 0")
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    if on_ready:
        on_ready(bound)
    task_status.started(bound)
    slots = trio.Semaphore(max_connections)

    async def handler(stream: trio.SocketStream) -> None:
        try:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await _handle(stream, metrics, request_timeout)
        finally:
            slots.release()

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, listener, handler, slots, nursery)


async def _accept_loop(
    listener: trio.SocketListener,
    handler: Callable[[trio.SocketStream], Any],
    slots: trio.Semaphore,
    nursery: trio.Nursery,
) -> None:
    """Accept only when a slot is free: a connection beyond the cap stays in the backlog, not in our fds."""
    async with listener:
        while True:
            await slots.acquire()
            try:
                stream = await listener.accept()
            except OSError:  # out of descriptors, or the peer gave up: back off briefly, keep serving
                slots.release()
                await trio.sleep(0.1)
                continue
            except BaseException:
                slots.release()
                raise
            nursery.start_soon(handler, stream)


async def fetch(port: int, path: str = "/status", *, host: str = "127.0.0.1", timeout: float = 5.0) -> bytes:
    """GET ``path`` from a local metrics server and return the body (used by tests and ``net up``)."""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200"):
        first = head.split(b"\r\n", 1)[0].decode(errors="replace")
        raise OSError(f"GET {path}: {first}")
    return body
