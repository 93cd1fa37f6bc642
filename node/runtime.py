"""The trio runtime that drives one sans-I/O protocol object on a real node.

Glue only (docs/design.md): transport events become protocol events, protocol actions become writes,
timers and training. Everything happens on one trio thread, so the protocol is never entered twice at
once; local training runs in a worker thread (``trio.to_thread.run_sync``) under a lock that also covers
evaluation, because both use the learner's one model.

What the runtime adds around the protocol:

- every frame is decoded under :class:`~phalanx.gossip.wire.Limits`; a bad one is dropped, counted by
  reason, logged, and is a strike against its sender (:class:`~phalanx.node.bans.BanList`);
- a model update for a round this node has already completed is dropped as ``stale``, and one whose
  (round, step) is not newer than the last one accepted from that peer is dropped as ``replay``;
- after each round: evaluate, write the checkpoint atomically, log one JSON line, update metrics.

**When the run ends.** The node finishes when its protocol says the run is over (``Protocol.finished``),
once the rounds reported before are written; then it lingers ``linger`` seconds, still answering (a
MoDeST straggler may still ping it), and stops. A protocol whose every node reports every round also
finishes when it reported ``rounds`` rounds (a plug-in that does not implement ``finished``); a sampled one
(MoDeST) never by counting: its node reports only the rounds it is sampled in, with numbers that may skip,
and reporting the last round does not mean its part is done (an aggregator may still hand the final
model to the other trainers).

Log lines go to ``log`` (stdout by default), one JSON object per line, so that ``net up`` and tests can
follow a node by reading its output.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
import trio

from phalanx.gossip.compression.channel import OUT_OF_SYNC, Channel
from phalanx.gossip.events import (
    Action,
    CancelTimer,
    Evaluate,
    EvaluationDone,
    Event,
    MessageReceived,
    PeerDown,
    PeerUp,
    PenalisePeer,
    RoundCompleted,
    Send,
    SetTimer,
    TimerFired,
    Train,
    TrainingDone,
)
from phalanx.gossip.messages import Compressed, ModelUpdate, decode, encode
from phalanx.gossip.protocol import Protocol, ProtocolError
from phalanx.gossip.wire import Limits, WireError
from phalanx.node import checkpoint as ckpt
from phalanx.node.bans import BanList
from phalanx.node.learner import Learner
from phalanx.node.metrics import Metrics
from phalanx.node.transport import Connected, Disconnected, Frame, Rejected, Transport, TransportError

# Remote errors reported by the protocol (PenalisePeer) are counted under this reason.
PENALISED = "penalised"


@dataclass(slots=True, kw_only=True)
class RuntimeSettings:
    rounds: int = 0  # 0: run until cancelled
    eval_every: int = 1
    linger: float = 1.0  # seconds to keep answering after the last round
    checkpoint_path: Path | None = None
    protocol_name: str = ""
    byzantine: str = ""
    send_retry: float = 3.0  # seconds to keep retrying a failed send
    eval_samples: int = 200  # local samples an Evaluate action uses when it names no number
    sampled: bool = False  # only a sample reports each round: finish on Protocol.finished, never by counting
    tensorboard: Path | None = None  # write each round line's scalars there (node/tensorboard.py)
    join: bool = False  # a node joining a running network: resume() right after start() (MoDeST's join)
    # Each peer's frame budget: at most this many frames per round of this node, the count starting afresh
    # when a round completes or ``frame_window`` seconds pass (a MoDeST node that is not sampled completes
    # no round while the network goes on: then at most this many per second); a frame beyond it is dropped
    # as "flood" and struck before it is decoded. Honest peers send a few per round.
    frames_per_round: int = 128
    frame_window: float = 1.0


@dataclass(slots=True, kw_only=True)
class RoundSnapshot:
    """A finished round and the training state that belongs with it, taken before the next round trains."""

    done: RoundCompleted
    momentum: torch.Tensor
    steps: int
    buffers: torch.Tensor  # the local buffers (empty unless the buffer policy keeps some)
    extra: dict[str, Any]  # checkpoint extras: local buffers, Adam's second moment
    spent: Any = None  # the privacy spent by the end of the round (issue 18), or None


class NodeRuntime:
    def __init__(
        self,
        *,
        protocol: Protocol,
        transport: Transport,
        learner: Learner,
        limits: Limits,
        metrics: Metrics,
        bans: BanList,
        settings: RuntimeSettings,
        start_round: int = 0,
        log: TextIO | None = None,
        clock: Callable[[], float] = trio.current_time,
        channel: Channel | None = None,
        between_rounds: Callable[[int], list[Action]] | None = None,
    ) -> None:
        self.protocol = protocol
        # compression and privacy of model payloads (issue 18, gossip/compression/channel.py); inactive:
        # model messages travel as they are and compressed ones are refused
        self.channel = channel or Channel(reference=torch.zeros(limits.dim))
        # called after each RoundCompleted with the rounds completed so far; its actions are carried out
        # (a joined node's new neighbours or members: node/app.py)
        self.between_rounds = between_rounds
        self.transport = transport
        self.learner = learner
        self.limits = limits
        self.metrics = metrics
        self.bans = bans
        self.settings = settings
        self.clock = clock
        self._log = log or sys.stdout
        self._completed = start_round  # rounds completed so far (== the next round's index)
        self._last_seen: dict[str, tuple[int, int]] = {}
        # frames per peer in the current window (RuntimeSettings.frames_per_round)
        self._frames: dict[str, int] = {}
        self._frames_key: tuple[int, int] = (-1, -1)  # (rounds completed, window number) they count in
        self._timers: dict[str, trio.CancelScope] = {}
        self._learner_lock = trio.Lock()
        # a round to write, or None: the protocol finished (written after the rounds queued before it)
        self._rounds_out: trio.MemorySendChannel[RoundSnapshot | None]
        self._rounds_in: trio.MemoryReceiveChannel[RoundSnapshot | None]
        self._rounds_out, self._rounds_in = trio.open_memory_channel(math.inf)
        self._finished = trio.Event()
        self._stopped_logged = False  # the "stopped" line (run totals) is written once, also when cancelled
        self._finish_queued = False
        self._nursery: trio.Nursery | None = None
        self._t0 = time.monotonic()
        self.metrics.round = start_round
        self.metrics.protocol = settings.protocol_name
        self._board: Any = None
        if settings.tensorboard is not None:
            from phalanx.node.tensorboard import NODE_TAGS, open_writer

            self._board = open_writer(settings.tensorboard, NODE_TAGS)
        self.metrics.protocol_stats = self._stats
        self.metrics.byzantine = settings.byzantine

    def _stats(self) -> dict[str, float]:
        """The protocol's counters, the transport's (streams and bytes held, pools' refusals: ``transport_``),
        and the channel's (compression counters, privacy spent) when active."""
        stats: dict[str, float] = dict(self.protocol.stats())
        stats.update({"transport_" + k: v for k, v in self.transport.stats().items()})
        if self.channel.active:
            stats.update({"codec_" + k: v for k, v in self.channel.stats().items()})
            spent = self.channel.spent()
            if spent is not None:
                stats.update(dp_epsilon=spent.epsilon, dp_delta=spent.delta)
        return stats

    def _encode_sends(self, actions: list[Action]) -> dict[tuple[int, str], bytes]:
        """Each Send's frame body, by (message id, peer): one pass through the channel and one encoding per
        message object, however many peers get it."""
        peers: dict[int, tuple[Any, list[str]]] = {}
        for action in actions:
            if isinstance(action, Send):
                peers.setdefault(id(action.message), (action.message, []))[1].append(action.peer)
        bodies: dict[tuple[int, str], bytes] = {}
        for key, (message, group) in peers.items():
            for wire_message, receivers in self.channel.outgoing(message, group):
                body = encode(wire_message)
                bodies.update(((key, peer), body) for peer in receivers)
        return bodies

    # ------------------------------------------------------------------ logging

    def log(self, event: str, **fields: Any) -> None:
        record = {"event": event, "t": round(time.monotonic() - self._t0, 3), **fields}
        print(json.dumps(record, separators=(",", ":")), file=self._log, flush=True)

    # ------------------------------------------------------------------ main loop

    async def run(self) -> None:
        """Run until the configured number of rounds is done (then linger) or until cancelled."""
        try:
            await self._run()
        finally:
            # also when cancelled (SIGTERM: net up stops a sampled node that could not know the run was over):
            # the run's byte and message totals are on this line only (issue 14: 11 of 16 MoDeST nodes had
            # none, so net up counted 0.66x the simulator's bytes)
            self._log_stopped()
            if self._board is not None:
                self._board.close()

    def _log_stopped(self) -> None:
        if self._stopped_logged:
            return
        self._stopped_logged = True
        m = self.metrics
        self.log(
            "stopped",
            round=self._completed,
            bytes_in=m.bytes_in,
            bytes_out=m.bytes_out,
            messages_in=m.messages_in,
            messages_out=m.messages_out,
            rejected=sum(m.rejected.values()),
            protocol=self._stats(),
        )

    async def _run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._pump_transport)
            nursery.start_soon(self._round_writer)
            if self.settings.rounds and self._completed >= self.settings.rounds:
                self._finish()
            else:
                self._apply(self.protocol.start(self.clock()))
                if self.settings.join:
                    self._apply(self.protocol.resume(self.clock()))
            await self._finished.wait()
            # keep answering during the linger: the protocol still gets every event
            await trio.sleep(self.settings.linger)
            self._log_stopped()
            nursery.cancel_scope.cancel()

    def _finish(self) -> None:
        if self._finished.is_set():
            return
        self.metrics.finished = True
        self.log("finished", round=self._completed)
        self._finished.set()

    def dispatch(self, event: Event) -> None:
        """Hand one event to the protocol and carry out its actions."""
        try:
            actions = self.protocol.handle(event, self.clock())
        except ProtocolError as exc:
            if exc.remote and exc.peer is not None:
                self._reject(exc.peer, PENALISED, str(exc))
                return
            raise
        self._apply(actions)

    def _apply(self, actions: list[Action]) -> None:
        assert self._nursery is not None
        bodies = self._encode_sends(actions)
        round_done = False
        for action in actions:
            if isinstance(action, Send):
                self._nursery.start_soon(self._send, action.peer, bodies[(id(action.message), action.peer)])
            elif isinstance(action, Train):
                self._nursery.start_soon(self._train, action)
            elif isinstance(action, SetTimer):
                self._cancel_timer(action.name)
                scope = trio.CancelScope()
                self._timers[action.name] = scope
                self._nursery.start_soon(self._timer, action.name, action.deadline, scope)
            elif isinstance(action, CancelTimer):
                self._cancel_timer(action.name)
            elif isinstance(action, RoundCompleted):
                self._completed = max(self._completed, action.round + 1)
                round_done = True
                # Snapshot the optimiser state now, before the next round's training can start: no training
                # runs between a round's exchange and its end, so it belongs with action.params.
                learner = self.learner
                self._rounds_out.send_nowait(
                    RoundSnapshot(
                        done=action,
                        momentum=learner.state.momentum.to("cpu", copy=True),
                        steps=learner.state.steps,
                        buffers=learner.state.buffers.clone(),
                        # local buffers (--buffers local) and Adam's second moment, as checkpoint bytes
                        extra={**learner.local_buffers(), **learner.optimizer_extra()},
                        # and the privacy spent by the end of this round (issue 18), before later sends add to it
                        spent=self.channel.spent(),
                    )
                )
            elif isinstance(action, PenalisePeer):
                self._reject(action.peer, PENALISED, action.reason)
            elif isinstance(action, Evaluate):
                self._nursery.start_soon(self._evaluate, action)
        if round_done and self.between_rounds is not None:
            self._apply(self.between_rounds(self._completed))
        if not self._finish_queued and self.protocol.finished:
            self._finish_queued = True
            self._rounds_out.send_nowait(None)  # finish once the rounds reported so far are written

    # ------------------------------------------------------------------ actions

    async def _send(self, peer: str, body: bytes) -> None:
        # A peer that is not up yet (nodes start in any order) or restarting gets a few retries with
        # backoff, for at most send_retry seconds; after that the protocol's round timeout copes.
        deadline = trio.current_time() + self.settings.send_retry
        delay = 0.1
        while True:
            try:
                await self.transport.send(peer, body)
                break
            except TransportError as exc:
                if trio.current_time() + delay > deadline:
                    self.channel.lost(peer)  # its next model message is a keyframe
                    self.metrics.send_failures += 1
                    self.log("send-failed", peer=peer, error=str(exc)[:200])
                    return
            await trio.sleep(delay)
            delay *= 2
        self.metrics.bytes_out += len(body) + 4
        self.metrics.messages_out += 1

    async def _train(self, action: Train) -> None:
        async with self._learner_lock:
            learner = self.learner

            def work() -> tuple[torch.Tensor, float]:
                learner.set_vector(action.params)
                loss = learner.train(action.steps)
                return learner.get_vector(), loss

            params, loss = await trio.to_thread.run_sync(work)
        self.dispatch(TrainingDone(round=action.round, params=params, loss=loss))

    async def _evaluate(self, action: Evaluate) -> None:
        """The protocol asked how a model does on this node's own samples (Bristle-style filters)."""
        async with self._learner_lock:
            learner = self.learner
            acc, loss, per_class, n = await trio.to_thread.run_sync(
                lambda: learner.evaluate_local(action.params, action.samples or self.settings.eval_samples)
            )
        self.dispatch(
            EvaluationDone(
                tag=action.tag, round=action.round, accuracy=acc, loss=loss, per_class=per_class, samples=n
            )
        )

    def _cancel_timer(self, name: str) -> None:
        scope = self._timers.pop(name, None)
        if scope is not None:
            scope.cancel()

    async def _timer(self, name: str, deadline: float, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep_until(deadline)
            if self._timers.get(name) is scope:
                del self._timers[name]
                self.dispatch(TimerFired(name=name))

    # ------------------------------------------------------------------ rounds: evaluate, checkpoint, log

    async def _round_writer(self) -> None:
        async for item in self._rounds_in:
            if item is None:
                self._finish()
                continue
            await self._complete_round(item)

    async def _complete_round(self, snapshot: RoundSnapshot) -> None:
        done = snapshot.done
        number = done.round + 1
        acc, loss = math.nan, math.nan
        evaluate = self.settings.eval_every and (
            number % self.settings.eval_every == 0 or number == self.settings.rounds
        )
        async with self._learner_lock:
            learner = self.learner
            if evaluate:
                # with the node's local buffers of that round (BatchNorm statistics under --buffers local)
                acc, loss = await trio.to_thread.run_sync(
                    lambda: learner.evaluate(done.params, snapshot.buffers)
                )
        self.metrics.round = number
        self.metrics.rounds_completed += 1
        if evaluate:
            self.metrics.accuracy, self.metrics.loss = acc, loss
        now = self.clock()
        self.metrics.banned = len(self.bans.banned(now))
        self.metrics.peers = len(self.transport.peers())
        if self.settings.checkpoint_path is not None:
            state = ckpt.Checkpoint(
                round=number,
                params=done.params,
                momentum=snapshot.momentum,
                steps=snapshot.steps,
                peer_id=self.transport.peer_id,
                view=sorted(self.transport.peers()),
                counters=self.metrics.counters(),
                bans=self.bans.to_dict(now),
                extra={
                    "protocol": self.settings.protocol_name,
                    **snapshot.extra,
                    **self.learner.checkpoint_extra(),
                    **({"channel": self.channel.to_fields()} if self.channel.active else {}),
                },
            )
            await trio.to_thread.run_sync(ckpt.save, self.settings.checkpoint_path, state)
        line = dict(
            round=number,
            accuracy=None if math.isnan(acc) else round(acc, 4),
            loss=None if math.isnan(loss) else round(loss, 4),
            received=done.received,
            accepted=done.accepted,
            bytes_in=self.metrics.bytes_in,
            bytes_out=self.metrics.bytes_out,
            messages_in=self.metrics.messages_in,
            messages_out=self.metrics.messages_out,
            rejected=sum(self.metrics.rejected.values()),
            peers=self.metrics.peers,
        )
        if snapshot.spent is not None:
            line.update(dp_epsilon=snapshot.spent.epsilon, dp_delta=snapshot.spent.delta)
        self.log("round", **line)
        if self._board is not None:
            self._board.write(line)
        if not self.settings.sampled and self.settings.rounds and number >= self.settings.rounds:
            self._finish()

    # ------------------------------------------------------------------ inbound

    def _reject(self, peer: str, reason: str, detail: str = "", count: int = 1) -> None:
        self.metrics.reject(reason, count)
        extra: dict[str, Any] = {"detail": detail[:200]} if detail else {}
        if count > 1:
            extra["count"] = count  # a coalesced report (a banned peer's refused streams)
        self.log("rejected", peer=peer, reason=reason, **extra)
        if reason in ("banned", "stale", OUT_OF_SYNC):
            return  # already banned / an honest peer that is slow: not a strike
        self._strike(peer)

    def _strike(self, peer: str) -> None:
        now = self.clock()
        if self.bans.strike(peer, now):
            self.metrics.banned = len(self.bans.banned(now))
            self.log("banned", peer=peer, seconds=self.bans.duration)

    def _within_frame_budget(self, peer: str) -> bool:
        """Count ``peer``'s frame in this round's window; False (dropped, struck) past its budget."""
        key = (self._completed, int(self.clock() // self.settings.frame_window))
        if key != self._frames_key:
            self._frames_key = key
            self._frames.clear()
        n = self._frames[peer] = self._frames.get(peer, 0) + 1
        if n <= self.settings.frames_per_round:
            return True
        if n == self.settings.frames_per_round + 1:  # one report per window: a flood is not a log flood
            self._reject(
                peer, "flood", f"more than {self.settings.frames_per_round} frames in round {self._completed}"
            )
        else:  # counted and struck like a report, without its log line
            self.metrics.reject("flood")
            self._strike(peer)
        return False

    def _accept(self, peer: str, body: bytes) -> None:
        self.metrics.bytes_in += len(body) + 4
        if self.bans.is_banned(peer, self.clock()):
            self._reject(peer, "banned")
            return
        if not self._within_frame_budget(peer):
            return
        try:
            message = decode(body, self.limits)
            if isinstance(message, Compressed):
                message = self.channel.incoming(peer, message, self.limits)
        except WireError as exc:
            self._reject(peer, exc.reason, str(exc))
            return
        if isinstance(message, ModelUpdate):
            key = (message.round, message.step)
            if message.round < self._completed:
                self._reject(peer, "stale", f"round {message.round} already completed")
                return
            if key <= self._last_seen.get(peer, (-1, -1)):
                self._reject(peer, "replay", f"round {message.round} step {message.step} seen before")
                return
            self._last_seen[peer] = key
        self.metrics.messages_in += 1
        self.dispatch(MessageReceived(peer=peer, message=message))

    async def _pump_transport(self) -> None:
        while True:
            event = await self.transport.receive()
            if isinstance(event, Frame):
                self._accept(event.peer, event.body)
            elif isinstance(event, Rejected):
                self._reject(event.peer, event.reason, count=event.count)
            elif isinstance(event, Connected):
                self.metrics.peers = len(self.transport.peers())
                self.dispatch(PeerUp(peer=event.peer))
            elif isinstance(event, Disconnected):
                self.channel.lost(event.peer)
                self.metrics.peers = len(self.transport.peers())
                self.dispatch(PeerDown(peer=event.peer))
