"""A real ``phalanx node run`` process for tests: start it, follow its JSON log lines, always kill it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from phalanx.node.netup import _lines


class NodeProcess:
    def __init__(self, args: list[str], *, log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        self.proc: trio.Process | None = None
        self.events: list[dict[str, Any]] = []
        self._lines: AsyncIterator[bytes] | None = None

    async def start(self) -> None:
        stderr = self.log_path.open("ab")
        self.proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "phalanx", "node", "run", *self.args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        stderr.close()
        assert self.proc.stdout is not None
        self._lines = _lines(self.proc.stdout)

    async def next_event(self, kind: str, *, timeout: float = 30.0, **match: Any) -> dict[str, Any]:
        """The next log record of ``kind`` whose fields equal ``match`` (or whose ``round`` >= match's)."""
        assert self._lines is not None
        with trio.fail_after(timeout):
            async for line in self._lines:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                self.events.append(event)
                if event.get("event") != kind:
                    continue
                if all(
                    (event.get(k, -1) >= v) if k == "round" else event.get(k) == v for k, v in match.items()
                ):
                    return event
        raise AssertionError(f"node exited before a {kind!r} event; stderr in {self.log_path}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    async def wait(self) -> int:
        assert self.proc is not None
        return await self.proc.wait()

    async def aclose(self) -> None:
        if self.proc is not None:
            self.kill()
            with trio.CancelScope(shield=True):
                await self.proc.wait()
