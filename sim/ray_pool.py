"""A sweep's runs on a Ray cluster (the optional extra ``phalanx[ray]``): the same jobs and results as the
local process pool (:class:`phalanx.sim.sweep.LocalPool`), so the same files, bit for bit.

``address`` is what ``ray.init`` takes: ``auto`` (the cluster that ``ray start`` runs on this machine, or
``RAY_ADDRESS``), ``HOST:PORT`` of a cluster's head (its GCS port, 6379 by default), ``ray://HOST:10001``
(Ray Client), or ``local`` for a throwaway cluster of ``workers`` CPUs on this machine. Each run asks for one
CPU; the cluster's CPUs decide how many run at once. Every machine of the cluster needs phalanx installed
(the same version) in the Python that its Ray workers run: a job names its function, it does not carry code.

Ray moves jobs and results between machines with pickle: a Ray cluster is trusted, like the local pool's
worker processes; nothing from the gossip network travels this way.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

from phalanx.sim.config import ConfigError

J = TypeVar("J")
R = TypeVar("R")

MISSING = "--ray needs the ray package: pip install 'phalanx[ray]' (or pip install 'ray>=2.9')"


def import_ray() -> ModuleType:
    """The ``ray`` module, or one :class:`ConfigError` line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(MISSING) from None
    return ray


def check_reachable(address: str, *, timeout: float = 5.0) -> None:
    """One TCP connection to ``HOST:PORT`` (or ``ray://HOST:PORT``) before Ray tries: Ray itself retries an
    unreachable head for minutes. ``auto`` is left to Ray, which fails at once when no cluster runs here."""
    if address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--ray expects auto, local, HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


@dataclass(slots=True)
class RayPool:
    """Runs jobs as Ray tasks of one CPU each. Connects on :meth:`__enter__` (unless this process is already
    connected, as a test or a notebook may be) and disconnects on :meth:`__exit__` if it connected."""

    address: str
    workers: int = 2
    _ray: Any = None
    _owned: bool = False

    def __enter__(self) -> RayPool:
        ray = import_ray()
        self._ray = ray
        if ray.is_initialized():
            return self
        options: dict[str, Any] = {
            "logging_level": logging.WARNING,
            "log_to_driver": False,
            "configure_logging": True,
        }
        if self.address == "local":
            options.update(num_cpus=self.workers, include_dashboard=False)
        else:
            check_reachable(self.address)
            options["address"] = self.address
        try:
            ray.init(**options)
        except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
            raise ConfigError(
                f"cannot reach the Ray cluster at {self.address!r}: {exc}".splitlines()[0]
            ) from None
        self._owned = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._owned and self._ray is not None:
            self._ray.shutdown()
        self._owned = False

    def cpus(self) -> int:
        """The cluster's CPUs (how many runs go at once)."""
        return int(self._ray.cluster_resources().get("CPU", 0))

    def map(self, fn: Callable[[J], R], jobs: Sequence[J], on_done: Callable[[int, R], None]) -> None:
        ray = self._ray
        assert ray is not None, "use RayPool as a context manager"
        task = ray.remote(num_cpus=1, max_retries=0)(fn)
        pending = {task.remote(job): i for i, job in enumerate(jobs)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                on_done(pending.pop(ref), ray.get(ref))
