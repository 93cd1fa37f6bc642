"""Run a local network of real node processes on 127.0.0.1 (what ``phalanx net up`` does).

The orchestrator creates each node's key first (so every peer id is known before any process starts), picks
free loopback ports, writes ``addressbook.toml`` and ``topology.txt`` into the run directory, starts one
``phalanx node run`` process per node with its neighbours' multiaddrs, and follows every node by reading
its JSON log lines from stdout. It SIGKILLs nodes at the rounds asked for, and ends when every node that is
still meant to run has finished (or at the deadline).

**Sampled protocols** (MoDeST; ``NetSpec.sampled``): only a round's sample reports it, so a node may report
rounds 1 and 3 and nothing else, and a node sampled in no late round never learns that the run is over
(nothing tells an idle MoDeST node the network's round; it learns it only from the pongs to its own pings).
So progress is the network's: a kill fires once any node reported the kill round, a stall is the network
completing no round, and once the final round was reported the nodes that have not finished on their own get
``final_grace`` seconds, then SIGTERM (``told``: a clean stop, not a failure). We chose telling over waiting
because no protocol message can end such a node's run; the orchestrator is the one that saw the last round. Children are always reaped: on success, on error and on
Ctrl-C they get SIGTERM, then SIGKILL after a grace period.

This module does not import the simulator: the caller passes the graph as an edge list.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from phalanx.node.identity import load_or_create_key, peer_id_of

GRACE = 5.0
#: How long a node that finished (or was told to stop) gets to exit before it is stopped.
EXIT_GRACE = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class NetSpec:
    n: int
    edges: Sequence[tuple[int, int]]
    rounds: int
    workdir: Path
    byzantine: dict[int, str] = field(default_factory=dict)
    kills: dict[int, int] = field(default_factory=dict)  # node -> SIGKILL once it completed this round
    node_args: Sequence[str] = ()  # flags every node gets (dataset, model, rule, ...)
    timeout: float = 600.0
    stall: float = 120.0  # a running node that completes no round for this long stops the run
    startup: float = 180.0  # seconds a node may take from its start to its "listening" line
    node_memory: int = 900 << 20  # bytes one node process is expected to take (see check_memory)
    sampled: bool = False  # only a round's sample reports it (the protocol spec's report == "sampled")
    final_grace: float = 5.0  # sampled: seconds after the final round's first report before the rest are told
    features_sha256: str = ""  # --train-only head: the frozen part every node must report having loaded

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"need at least 1 node, got {self.n}")
        for i in [*self.byzantine, *self.kills]:
            if not 0 <= i < self.n:
                raise ValueError(f"node {i} out of range for {self.n} nodes (0..{self.n - 1})")
        for a, b in self.edges:
            if not (0 <= a < self.n and 0 <= b < self.n):
                raise ValueError(f"edge ({a}, {b}) names a node outside 0..{self.n - 1}")


@dataclass(slots=True)
class NodeRecord:
    index: int
    peer_id: str
    address: str
    role: str = "honest"
    pid: int = 0
    metrics_port: int = -1
    rounds: list[dict[str, Any]] = field(default_factory=list)  # the node's "round" log records
    rejected: int = 0
    finished: bool = False
    killed_at: int | None = None
    exit_code: int | None = None
    final: dict[str, Any] = field(default_factory=dict)  # counters logged when the node stopped
    started_at: float = 0.0
    listening_at: float | None = None
    progress_at: float = 0.0  # when it last logged a round (or started listening)
    last_line: str = ""  # its last log line, for a stall or failure message
    problem: str = ""  # why this node stopped the run (stalled, failed)
    told: bool = False  # stopped (SIGTERM) by net up after the final round was reported (sampled protocols)

    @property
    def live(self) -> bool:
        return not self.finished and not self.told and self.killed_at is None and self.exit_code is None

    @property
    def last(self) -> dict[str, Any]:
        return self.rounds[-1] if self.rounds else {}

    def counter(self, key: str) -> int:
        """A counter at the end: from the node's "stopped" line, else its last round line."""
        return int(self.final.get(key, self.last.get(key, 0)))


@dataclass(slots=True)
class NetResult:
    nodes: list[NodeRecord]
    wall_time: float
    timed_out: bool = False

    @property
    def problems(self) -> list[str]:
        return [n.problem for n in self.nodes if n.problem]


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """Where a running network is: the rounds of the nodes still running and how many are in each state."""

    rounds: int
    low: int
    median: float
    high: int
    running: int
    finished: int
    killed: int
    failed: int
    elapsed: float
    sampled: bool = False  # only a round's sample reports it: the network's round is the newest reported

    def line(self) -> str:
        states = f"{self.running} running, {self.finished} finished, {self.killed} killed" + (
            f", {self.failed} failed" if self.failed else ""
        )
        if self.sampled:  # a node's own last round says only when it was last sampled
            return f"net up: network round {self.high} of {self.rounds}; {states}; {self.elapsed:.0f} s"
        return (
            f"net up: round min {self.low} / median {self.median:g} / max {self.high} of {self.rounds}; "
            f"{states}; {self.elapsed:.0f} s"
        )


def progress_of(
    records: Sequence[NodeRecord], rounds: int, elapsed: float, *, sampled: bool = False
) -> Progress:
    """The progress of every node that has not been killed: min / median / max of its last round."""
    alive = [r for r in records if r.killed_at is None]
    done = sorted(r.last.get("round", 0) for r in alive) or [0]
    mid = len(done) // 2
    median = done[mid] if len(done) % 2 else (done[mid - 1] + done[mid]) / 2
    return Progress(
        rounds=rounds,
        low=done[0],
        median=median,
        high=done[-1],
        running=sum(r.live for r in records),
        finished=sum(r.finished for r in records),
        killed=sum(r.killed_at is not None for r in records),
        failed=sum(r.exit_code not in (None, 0) and not r.finished and not r.told for r in records),
        elapsed=elapsed,
        sampled=sampled,
    )


def memory_available() -> int | None:
    """MemAvailable from /proc/meminfo, in bytes (None where there is no such file)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def node_memory_estimate(dataset: str, dim: int = 0) -> int:
    """Bytes one ``phalanx node run`` process takes, measured on this project's machine: about 380 MB
    with blobs and logreg (torch and the interpreter), about 850 MB with the embedded MNIST and the MLP;
    plus room for the model's vectors (parameters, momentum, neighbours' models in flight)."""
    base = 400 << 20 if dataset == "blobs" else 900 << 20
    return base + 32 * 4 * dim


def check_memory(n: int, per_node: int, available: int | None = None) -> None:
    """Refuse a network whose processes would not fit in the memory available now (one line, ValueError)."""
    available = memory_available() if available is None else available
    if available is None:
        return
    fits = int(available * 0.9) // max(per_node, 1)
    if n > fits:
        raise ValueError(
            f"{n} node processes need about {n * per_node / 2**30:.1f} GiB "
            f"({per_node / 2**20:.0f} MiB each) but {available / 2**30:.1f} GiB is available: "
            f"at most {fits} fit; use fewer nodes (or --node-memory MIB if the estimate is wrong)"
        )


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections (Linux; a common default elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(n: int) -> list[int]:
    """n distinct loopback ports that are free now and that no outgoing connection will take.

    Ports are picked *below* the kernel's ephemeral range: a port merely reserved by binding port 0
    and closing it again is back in the ephemeral pool, and the first nodes' outgoing dials to their
    neighbours could take it before the node meant to listen on it starts (seen as a node failing
    to listen at start-up).
    """
    low, _ = _ephemeral_range()
    first = 10000 if low > 11000 else 1024
    candidates = list(range(first, low))
    random.SystemRandom().shuffle(candidates)
    ports: list[int] = []
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            return ports
    raise OSError(f"found only {len(ports)} free loopback ports below {low} for {n} nodes")


def prepare(spec: NetSpec) -> list[NodeRecord]:
    """Keys, ports, address book and topology file; returns one record per node."""
    spec.workdir.mkdir(parents=True, exist_ok=True)
    ports = free_ports(spec.n)
    records = []
    for i in range(spec.n):
        pid = peer_id_of(load_or_create_key(spec.workdir / f"node-{i}" / "node.key"))
        addr = f"/ip4/127.0.0.1/tcp/{ports[i]}/p2p/{pid}"
        role = f"byzantine:{spec.byzantine[i]}" if i in spec.byzantine else "honest"
        records.append(NodeRecord(index=i, peer_id=pid, address=addr, role=role))
    book = "[peers]\n" + "".join(f'"{r.index}" = "{r.address}"\n' for r in records)
    (spec.workdir / "addressbook.toml").write_text(book)
    (spec.workdir / "topology.txt").write_text("".join(f"{a} {b}\n" for a, b in spec.edges))
    return records


def node_command(spec: NetSpec, record: NodeRecord) -> list[str]:
    i = record.index
    neighbours = sorted({b if a == i else a for a, b in spec.edges if i in (a, b) and a != b})
    port = record.address.split("/tcp/")[1].split("/")[0]
    cmd = [
        sys.executable,
        "-m",
        "phalanx",
        "node",
        "run",
        "--data-dir",
        str(spec.workdir / f"node-{i}"),
        "--listen",
        f"/ip4/127.0.0.1/tcp/{port}",
        "--nodes",
        str(spec.n),
        "--index",
        str(i),
        "--rounds",
        str(spec.rounds),
        "--metrics-port",
        "0",
    ]
    addresses = {r: line for r, line in enumerate(_addresses(spec))}
    for j in neighbours:
        cmd += ["--neighbour", addresses[j]]
    if not neighbours:
        cmd += ["--alone", "train"]  # an isolated node of the topology: it trains alone, and says so
    if i in spec.byzantine:
        cmd += ["--byzantine", spec.byzantine[i]]
    return cmd + list(spec.node_args)


def _addresses(spec: NetSpec) -> list[str]:
    import tomllib

    peers = tomllib.loads((spec.workdir / "addressbook.toml").read_text())["peers"]
    return [peers[str(i)] for i in range(spec.n)]


async def _lines(stream: trio.abc.ReceiveStream) -> Any:
    buf = b""
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            if buf:
                yield buf
            return
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            yield line


async def run_network(
    spec: NetSpec,
    *,
    on_event: Callable[[NodeRecord, dict[str, Any]], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    progress_every: float = 2.0,
    check_mem: bool = True,
) -> NetResult:
    """Start the network, follow it to the end, reap every child. Returns what each node reported.

    ``on_progress`` gets a :class:`Progress` when it changes (at most every ``progress_every`` seconds) and
    at least every 15 s. A node that completes no round for ``spec.stall`` seconds, or that exits with an
    error before finishing, stops the run; its record's ``problem`` names it and says what it last did."""
    if check_mem:
        check_memory(spec.n, spec.node_memory)
    records = prepare(spec)
    procs: dict[int, trio.Process] = {}
    start = trio.current_time()
    timed_out = False
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    network = {"round": 0, "at": start}  # sampled: the newest round any node reported, and when
    final_at: list[float] = []  # sampled: when the final round was first reported

    def kill_due(record: NodeRecord, reported: int) -> None:
        """SIGKILL the nodes whose kill round was reached: by the node itself, or (sampled) by anyone."""
        for i, kill_at in spec.kills.items():
            target = records[i]
            if target.killed_at is not None or target.exit_code is not None:
                continue
            if (i == record.index or spec.sampled) and reported >= kill_at and i in procs:
                target.killed_at = reported
                _signal(procs[i], signal.SIGKILL)

    async def follow(record: NodeRecord, proc: trio.Process) -> None:
        assert proc.stdout is not None
        # unbuffered: the file follows the node line by line (tail -f)
        with (spec.workdir / f"node-{record.index}" / "log.jsonl").open("ab", buffering=0) as raw:
            async for line in _lines(proc.stdout):
                raw.write(line + b"\n")
                record.last_line = line.decode(errors="replace")[:300]
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(event, dict):
                    continue
                kind = event.get("event")
                if kind == "listening":
                    record.metrics_port = int(event.get("metrics_port", -1))
                    record.listening_at = record.progress_at = trio.current_time()
                    loaded = event.get("features_sha256") or ""
                    if loaded != spec.features_sha256 and not record.problem:
                        record.problem = (
                            f"node {record.index} ({record.peer_id}) loaded frozen features "
                            f"{loaded or 'none'}, not {spec.features_sha256 or 'none'}"
                        )
                elif kind == "round":
                    record.rounds.append(event)
                    now = record.progress_at = trio.current_time()
                    reported = int(event.get("round", 0))
                    if reported > network["round"]:
                        network["round"], network["at"] = reported, now
                    if spec.sampled and reported >= spec.rounds and not final_at:
                        final_at.append(now)
                    kill_due(record, reported)
                elif kind == "rejected":
                    record.rejected += 1
                elif kind == "finished":
                    record.finished = True
                elif kind == "stopped":
                    record.final = event
                if on_event is not None:
                    on_event(record, event)
        record.exit_code = await proc.wait()
        if (
            record.exit_code != 0
            and not record.finished
            and not record.told
            and record.killed_at is None
            and not record.problem
        ):
            record.problem = (
                f"node {record.index} ({record.peer_id}) exited with status {record.exit_code} at round "
                f"{record.last.get('round', 0)}; {_last_words(spec, record)}"
            )

    def check_stalls(now: float) -> bool:
        """Mark a live node that made no progress for too long; True when one did."""
        stalled = False
        for r in records:
            if not r.live or r.problem:
                continue
            if r.listening_at is None and now - r.started_at > spec.startup:
                r.problem = (
                    f"node {r.index} ({r.peer_id}) did not start listening within {spec.startup:g} s; "
                    f"{_last_words(spec, r)}"
                )
            elif spec.sampled and r.listening_at is not None and now - network["at"] > spec.stall:
                # a sampled node may rightly report nothing for a while: only the network can stall
                r.problem = (
                    f"the network stalled at round {network['round']}: no node completed a round in "
                    f"{spec.stall:g} s; node {r.index} ({r.peer_id}) reported round {r.last.get('round', 0)}; "
                    f"{_last_words(spec, r)}"
                )
            elif not spec.sampled and r.listening_at is not None and now - r.progress_at > spec.stall:
                p = progress_of(records, spec.rounds, now - start)
                r.problem = (
                    f"node {r.index} ({r.peer_id}) stalled at round {r.last.get('round', 0)}: no round "
                    f"completed in {spec.stall:g} s (the running nodes are at rounds {p.low}..{p.high}); "
                    f"{_last_words(spec, r)}"
                )
            stalled = stalled or bool(r.problem)
            if stalled and spec.sampled:
                break  # one line for the network's stall
        return stalled

    def done() -> bool:
        return all(not r.live for r in records)

    def tell_the_rest(now: float) -> None:
        """Sampled: the final round was reported ``final_grace`` seconds ago; stop the nodes that did not
        finish on their own (sampled in no late round, they cannot know the run is over)."""
        if not final_at or now - final_at[0] < spec.final_grace:
            return
        for r in records:
            if r.live and r.index in procs:
                r.told = True
                _signal(procs[r.index], signal.SIGTERM)

    try:
        async with trio.open_nursery() as nursery:
            for record in records:
                node_dir = spec.workdir / f"node-{record.index}"
                node_dir.mkdir(parents=True, exist_ok=True)
                stderr = (node_dir / "stderr.log").open("ab")
                proc = await trio.lowlevel.open_process(
                    node_command(spec, record),
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    env=env,
                    start_new_session=True,  # Ctrl-C reaches us only; we stop the children ourselves
                )
                stderr.close()
                procs[record.index] = proc
                record.pid = proc.pid
                record.started_at = record.progress_at = trio.current_time()
                nursery.start_soon(follow, record, proc)
            nursery.start_soon(_interrupt_on_sigterm)
            shown: tuple[Any, ...] = ()
            shown_at = -math.inf
            with trio.move_on_after(spec.timeout) as scope:
                while not done():
                    await trio.sleep(0.05)
                    now = trio.current_time()
                    if check_stalls(now) or any(r.problem for r in records):
                        break
                    tell_the_rest(now)
                    if on_progress is not None:
                        p = progress_of(records, spec.rounds, now - start, sampled=spec.sampled)
                        key = (p.low, p.median, p.high, p.running, p.finished, p.killed, p.failed)
                        if (key != shown and now - shown_at >= progress_every) or now - shown_at >= 15:
                            shown, shown_at = key, now
                            on_progress(p)
            timed_out = scope.cancelled_caught
            # Nodes linger a moment after their last round, then exit; give them the grace period, and a
            # node that said it finished (or was told to stop) up to EXIT_GRACE: on a loaded machine its
            # exit can take longer, and its exit code belongs in the result.
            if not any(r.problem for r in records):
                short = trio.current_time() + GRACE
                long = trio.current_time() + EXIT_GRACE
                while pending := [r for r in records if r.exit_code is None and r.killed_at is None]:
                    now = trio.current_time()
                    if now > long or (now > short and not any(r.finished or r.told for r in pending)):
                        break
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await stop_all(list(procs.values()))
    return NetResult(nodes=records, wall_time=trio.current_time() - start, timed_out=timed_out)


def _last_words(spec: NetSpec, record: NodeRecord) -> str:
    """The node's last log line and last stderr line, and where its logs are."""
    folder = spec.workdir / f"node-{record.index}"
    err = ""
    with contextlib.suppress(OSError):
        tail = (folder / "stderr.log").read_bytes()[-4000:].decode(errors="replace").strip().splitlines()
        err = tail[-1][:300] if tail else ""
    parts = [_describe(record.last_line)]
    if err:
        parts.append(f"last stderr line: {err}")
    parts.append(f"logs in {folder}/ (log.jsonl, stderr.log)")
    return "; ".join(parts)


def _describe(line: str) -> str:
    """A node's last log line, shortly: its event and the fields that say where it was."""
    try:
        event = json.loads(line)
    except ValueError:
        return f"last output: {line[:200]}" if line else "no log line yet"
    if not isinstance(event, dict):
        return f"last output: {line[:200]}"
    keep = ("round", "peer", "address", "reason", "error", "message")
    extra = ", ".join(f"{k}={event[k]}" for k in keep if k in event)
    return f"last log line: {event.get('event')!r} at t={event.get('t', '?')} s" + (
        f" ({extra})" if extra else ""
    )


async def _interrupt_on_sigterm() -> None:
    """SIGTERM to the orchestrator stops the network like Ctrl-C does (children reaped in ``finally``)."""
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async for _ in signals:
            raise KeyboardInterrupt


def _signal(proc: trio.Process, sig: int) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)


async def stop_all(procs: list[trio.Process]) -> None:
    """SIGTERM every live child, wait up to GRACE seconds, SIGKILL the rest, and reap them all."""
    for proc in procs:
        _signal(proc, signal.SIGTERM)
    with trio.move_on_after(GRACE):
        for proc in procs:
            await proc.wait()
    for proc in procs:
        _signal(proc, signal.SIGKILL)
        await proc.wait()


def rows(result: NetResult, rounds: int, *, sampled: bool = False) -> list[dict[str, Any]]:
    """Per-round rows over the honest nodes, in the simulator's schema (``round`` is 0-based).

    A round's accuracy comes from the nodes that reported it: every live node (D-PSGD, EL) or the round's
    sample (``sampled``, MoDeST: the trainers of the next round). ``live`` counts the reporters, or with
    ``sampled`` (as the simulator does) the nodes alive then: not killed before the round."""
    out = []
    for r in range(1, rounds + 1):
        accs, losses, live, sent, messages = [], [], 0, 0, 0
        spent: list[tuple[float, float]] = []  # honest nodes' (epsilon, delta) at this round (issue 18)
        for node in result.nodes:
            upto = [e for e in node.rounds if e["round"] <= r]
            if r == rounds and node.final:  # the run's totals include what left after the last round line
                sent += node.counter("bytes_out")
                messages += node.counter("messages_out")
            elif upto:
                sent += upto[-1].get("bytes_out", 0)
                messages += upto[-1].get("messages_out", 0)
            at = next((e for e in node.rounds if e["round"] == r), None)
            if sampled:
                live += node.killed_at is None or node.killed_at >= r
            if at is None:
                continue
            live += not sampled
            if node.role == "honest" and at.get("accuracy") is not None:
                accs.append(at["accuracy"])
                losses.append(at.get("loss") or math.nan)
            if node.role == "honest" and at.get("dp_epsilon") is not None:
                spent.append((at["dp_epsilon"], at["dp_delta"]))
        out.append(
            {
                "round": r - 1,
                "time": max(
                    (e["t"] for n in result.nodes for e in n.rounds if e["round"] == r), default=None
                ),
                "acc_mean": sum(accs) / len(accs) if accs else None,
                "acc_min": min(accs) if accs else None,
                "acc_max": max(accs) if accs else None,
                "loss_mean": sum(losses) / len(losses) if losses else None,
                "consensus": None,
                "bytes": sent,
                "messages": messages,
                "live": live,
                **(
                    {"dp_epsilon": max(e for e, _ in spent), "dp_delta": max(d for _, d in spent)}
                    if spent
                    else {}
                ),
            }
        )
    return out


def node_table(result: NetResult) -> str:
    header = f"{'node':>4}  {'peer id':<14}  {'role':<18}  {'rounds':>6}  {'accuracy':>8}  {'MB in':>7}  {'MB out':>7}  {'rejected':>8}  state"
    lines = [header, "-" * len(header)]
    for n in result.nodes:
        last = n.last
        acc = last.get("accuracy")
        state = (
            "stalled"
            if "stalled" in n.problem
            else "stopped"  # by net up, after the final round (a sampled node that could not know it)
            if n.told
            else f"killed@{n.killed_at}"
            if n.killed_at is not None
            else "finished"
            if n.finished
            else f"exit {n.exit_code}"
            if n.exit_code not in (None, 0)
            else "running"
        )
        lines.append(
            f"{n.index:>4}  {n.peer_id[-14:]:<14}  {n.role:<18}  {last.get('round', 0):>6}  "
            f"{'-' if acc is None else f'{acc:.4f}':>8}  {n.counter('bytes_in') / 1e6:>7.2f}  "
            f"{n.counter('bytes_out') / 1e6:>7.2f}  {n.rejected:>8}  {state}"
        )
    return "\n".join(lines)
