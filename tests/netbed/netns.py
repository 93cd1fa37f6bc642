"""A test bed of Linux network namespaces: each node on its own "host", hosts joined by a switch.

Layout (nothing is created in the caller's own namespace)::

    namespace TOKEN-sw:   bridge br0, ports p0 .. p{n-1}
    namespace TOKEN-h{i}: lo, eth0 = 10.A.B.{i+1}/24     (eth0 <-> p{i} is a veth pair)

so a node in ``TOKEN-h0`` reaches one in ``TOKEN-h1`` through two veth pairs and a bridge, never through
loopback. :meth:`NetBed.limit` puts a ``tbf`` token bucket on a host's link, in both directions (egress of
``eth0`` and egress of its switch port). Commands run inside a host with :meth:`NetBed.command`, which
prefixes ``ip netns exec``.

Names carry the creating process id (``pxb<pid>x<hex>``): :meth:`NetBed.create` first deletes namespaces
of this naming whose creator is dead (left by a run that was SIGKILLed), and nothing else. :meth:`close`
always deletes what it made; a pytest fixture calls it in a finalizer and an ``atexit`` hook backs it up.
Deleting the namespaces deletes their veths and bridge with them. It needs root, ``ip`` and a kernel with
network namespaces, veth and bridges; :func:`unavailable` says why not where one of them is missing.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

_NAME = re.compile(r"^pxb(\d+)x[0-9a-f]+-(sw|h\d+)$")


class NetBedError(RuntimeError):
    """A namespace, link or qdisc could not be made."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise NetBedError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def _tc(*args: str) -> None:
    done = subprocess.run(["tc", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise NetBedError(f"tc {' '.join(args)}: {done.stderr.strip() or done.returncode}")


def unavailable() -> str | None:
    """Why namespaces cannot be made here (None when they can): not root, no ``ip``, or the kernel says no."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the '{tool}' command (iproute2) is not installed"
    probe = f"pxb{os.getpid()}x{secrets.token_hex(3)}-sw"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    try:
        link = _ip("-n", probe, "link", "add", "br0", "type", "bridge", check=False)
        if link.returncode != 0:
            return f"cannot create a bridge in a namespace: {link.stderr.strip()}"
        veth = _ip("-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1", check=False)
        if veth.returncode != 0:
            return f"cannot create a veth pair: {veth.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_orphans() -> list[str]:
    """Delete test-bed namespaces whose creating process is gone; returns their names."""
    listing = _ip("netns", "list", check=False).stdout.split("\n")
    removed = []
    for line in listing:
        name = line.split(" ", 1)[0].strip()
        match = _NAME.match(name)
        if match and not _alive(int(match.group(1))):
            _ip("netns", "del", name, check=False)
            removed.append(name)
    return removed


@dataclass(slots=True)
class NetBed:
    """``hosts`` namespaces on one bridge. Use as a context manager, or call :meth:`create` and :meth:`close`."""

    hosts: int
    token: str = field(default_factory=lambda: f"pxb{os.getpid()}x{secrets.token_hex(3)}")
    subnet: tuple[int, int] = field(
        default_factory=lambda: (secrets.randbelow(250) + 1, secrets.randbelow(250) + 1)
    )
    made: list[str] = field(default_factory=list)
    limits: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.hosts <= 250:
            raise ValueError(f"a test bed holds 1..250 hosts, not {self.hosts}")

    @property
    def switch(self) -> str:
        return f"{self.token}-sw"

    def namespace(self, i: int) -> str:
        return f"{self.token}-h{i}"

    def address(self, i: int) -> str:
        """Host i's IPv4 address; it exists only inside this bed's namespaces."""
        a, b = self.subnet
        return f"10.{a}.{b}.{i + 1}"

    def command(self, i: int, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside host i's namespace."""
        return ["ip", "netns", "exec", self.namespace(i), *argv]

    def create(self) -> NetBed:
        remove_orphans()
        atexit.register(self.close)
        try:
            self._add_namespace(self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            for i in range(self.hosts):
                ns = self.namespace(i)
                self._add_namespace(ns)
                _ip("-n", ns, "link", "set", "lo", "up")
                port = f"p{i}"
                _ip(
                    "-n",
                    self.switch,
                    "link",
                    "add",
                    port,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    ns,
                )
                _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
                _ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
        except BaseException:
            self.close()
            raise
        return self

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self.made.append(name)

    def limit(self, i: int, rate: str, *, burst: str = "64kb", latency: str = "100ms") -> None:
        """A token-bucket limit of ``rate`` (tc syntax: 10mbit) on host i's link, both ways."""
        for ns, dev in ((self.namespace(i), "eth0"), (self.switch, f"p{i}")):
            _tc(
                "-n",
                ns,
                "qdisc",
                "replace",
                "dev",
                dev,
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                burst,
                "latency",
                latency,
            )
        self.limits[i] = rate

    def shaped_bytes(self, i: int) -> tuple[int, int]:
        """Bytes that went through host i's tbf qdiscs: (out of the host, into the host)."""
        out = []
        for ns, dev in ((self.namespace(i), "eth0"), (self.switch, f"p{i}")):
            text = subprocess.run(
                ["tc", "-s", "-n", ns, "qdisc", "show", "dev", dev],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
            match = re.search(r"qdisc tbf .*?Sent (\d+) bytes", text, re.S)
            out.append(int(match.group(1)) if match else 0)
        return out[0], out[1]

    def close(self) -> None:
        """Delete every namespace this bed made (and with them its links). Safe to call twice."""
        while self.made:
            name = self.made.pop()
            _ip("netns", "del", name, check=False)
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)

    def __enter__(self) -> NetBed:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.close()
