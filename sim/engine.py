"""The discrete-event engine: a heap of timed events, a virtual clock, and nothing protocol-specific.

The engine runs any :class:`~phalanx.gossip.protocol.Protocol`: it calls ``start`` on every node, then pops
events in (time, sequence) order and hands each to its node's protocol, carrying out the actions that
come back:

- ``Send`` -> the message is sized with :func:`~phalanx.gossip.messages.encoded_size` (once per message
  object, however many peers it goes to), counted, and delivered after the :class:`~phalanx.sim.network.Network`
  transit time unless lost; a message to a dead node is dropped on arrival;
- ``Train`` -> the :class:`Worker` says how long training takes in virtual time; the training itself runs
  when that time comes (so a node that crashes meanwhile costs nothing) and ``TrainingDone`` follows.
  Trainings due at the same instant run back to back (up to :attr:`Engine.train_batch` of them) before
  their ``TrainingDone`` events are handled, in the same order: PyTorch's code and the protocols' each
  run in a burst and find their caches warm (measured 10-14 us less per node and round in
  ``scripts/bench_sim.py``). The one difference this can make: a node that a handler crashes or takes
  away at that very instant has its training computed (its batch, momentum and, for a model with
  dropout, the shared mask generator move on) and its ``TrainingDone`` dropped, where it was skipped;
- ``SetTimer``/``CancelTimer`` -> timers keyed by (node, name), a newer one replacing the older;
- ``RoundCompleted`` -> observers are told (metrics, fault schedules);
- ``Evaluate`` -> the worker evaluates the model on the node's own samples, and ``EvaluationDone`` follows
  at the same virtual instant (after the events already due then); a node's consecutive ``Evaluate``
  actions are evaluated together, through the worker's ``evaluate_many`` when it has one;
- ``PenalisePeer`` -> counted.

Compression and privacy (issue 18, ``docs/compression.md``): with ``channels`` (one
:class:`~phalanx.gossip.compression.channel.Channel` per node), a model message goes through its sender's
channel before it is sized and sent (a difference for the peers in sync, a keyframe for the others: the
bytes counted are those of what travels), and each receiver's channel rebuilds it on arrival, before the
protocol sees it; a delivery the channel refuses is dropped and counted in ``codec_rejected``. Messages the
network loses or a dead node never gets are reported to the sender's channel (``lost``), whose next message
to that peer is a keyframe. ``outbox`` keeps the uncompressed message (what an omniscient attacker reads).

Faults go through the protocol's lifecycle: :meth:`Engine.leave` lets the node announce its departure
(``Protocol.leave``) before it goes; :meth:`Engine.rejoin` brings it back and calls ``Protocol.resume``;
:meth:`Engine.crash` takes it away silently.

Everything random comes from the generators the caller passes in, and ties in time are broken by
insertion order, so a run is a pure function of its seed.

Observers implement any of ``on_round(engine, node, action, now)`` and ``on_send(engine, node, peer,
message, size, now)``. ``engine.outbox[node]`` holds the last message each node sent (what an omniscient
simulated attacker may look at).
"""

from __future__ import annotations

import gc
import heapq
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from typing import Protocol as TypingProtocol

import torch

from phalanx.gossip.compression.channel import Channel
from phalanx.gossip.events import (
    Action,
    CancelTimer,
    Evaluate,
    EvaluationDone,
    Event,
    MessageReceived,
    PeerDown,
    PeerId,
    PeerUp,
    PenalisePeer,
    RoundCompleted,
    Send,
    SetTimer,
    TimerFired,
    Train,
    TrainingDone,
)
from phalanx.gossip.messages import Compressed, Message, ModelUpdate, encoded_size
from phalanx.gossip.protocol import Protocol
from phalanx.gossip.wire import Limits, WireError
from phalanx.sim.network import Network

_DELIVER, _TIMER, _TRAINED, _CALL, _TRAINED_READY, _EVALUATE = 0, 1, 2, 3, 4, 5


class Worker(TypingProtocol):
    """Local training for simulated nodes."""

    def duration(self, node: PeerId, steps: int) -> float:
        """Virtual seconds ``steps`` local steps take on ``node``."""
        ...

    def train(self, node: PeerId, round: int, params: torch.Tensor, steps: int) -> tuple[torch.Tensor, float]:
        """Train from ``params`` (never modified); return a new vector and the mean loss."""
        ...

    def evaluate(
        self, node: PeerId, params: torch.Tensor, samples: int
    ) -> tuple[float, float, tuple[float, ...], int]:
        """Accuracy, loss, per-class accuracy and sample count of ``params`` on ``node``'s own samples."""
        ...


class Engine:
    #: How many trainings due at the same instant run before their ``TrainingDone`` events are handled
    #: (the models they return are held meanwhile: 16 of them is a few MB at most).
    train_batch = 16

    def __init__(
        self,
        protocols: Mapping[PeerId, Protocol],
        *,
        network: Network,
        worker: Worker,
        observers: tuple[Any, ...] = (),
        keep_outbox: bool = True,
        channels: Mapping[PeerId, Channel] | None = None,
    ) -> None:
        self.protocols = dict(protocols)
        # compression/privacy (issue 18): only the active channels; none means messages travel as they are
        self.channels = {n: c for n, c in (channels or {}).items() if c.active}
        self.codec_rejected: dict[str, int] = {}
        self._limits: Limits | None = None
        if self.channels:
            self._limits = Limits(dim=next(iter(self.channels.values())).dim)
        self.network = network
        self.worker = worker
        self.observers = list(observers)
        self.now = 0.0
        self.alive: set[PeerId] = set(self.protocols)
        self.alive_version = 0  # bumped whenever ``alive`` changes (observers cache what they derive from it)
        self.outbox: dict[PeerId, Message] = {}
        self.keep_outbox = keep_outbox  # off saves one model per node when no omniscient attacker reads it
        self.bytes_sent = 0
        self.messages_sent = 0
        self.penalties = 0
        self.events_handled = 0
        # (time, seq, kind, node, payload); for a delivery ``node`` is the sender and the payload
        # (message, receivers)
        self._heap: list[tuple[float, int, int, PeerId, Any]] = []
        self._seq = 0
        self._timer_gen: dict[tuple[PeerId, str], int] = {}
        self._size_of: tuple[object, int] = (None, 0)  # the last message sized, and its size
        self._model_sizes: dict[tuple[int, int, int], int] = {}
        self._stopped = False
        # The delivery entry the last push made, while nothing else has been pushed or popped since:
        # (time, message, sender, seq, receivers). A sender's Sends of one message object with the same
        # arrival time join it (see _deliver_at).
        self._group: tuple[float, Message, PeerId, int, list[PeerId]] | None = None
        self._round_obs = [o for o in self.observers if hasattr(o, "on_round")]
        self._send_obs = [o for o in self.observers if hasattr(o, "on_send")]
        # A protocol that keeps the base class's dispatch gets its messages by a direct call of its
        # ``on_message``: what ``handle(MessageReceived(...))`` would do, without the event object.
        self._on_message: dict[PeerId, Callable[[PeerId, Message, float], list[Action]] | None] = {
            node: proto.on_message if type(proto).handle is Protocol.handle else None
            for node, proto in self.protocols.items()
        }

    # ------------------------------------------------------------------ scheduling

    def _push(self, time: float, kind: int, node: PeerId, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (time, self._seq, kind, node, payload))

    def call_at(self, time: float, fn: Callable[[Engine], None]) -> None:
        """Run ``fn(engine)`` at virtual ``time`` (fault schedules use this)."""
        self._push(max(time, self.now), _CALL, "", fn)

    def stop(self) -> None:
        self._stopped = True

    # ------------------------------------------------------------------ faults

    def crash(self, node: PeerId) -> None:
        """``node`` stops silently: its neighbours notice only by their timeouts."""
        self.alive.discard(node)
        self.alive_version += 1

    def leave(self, node: PeerId, neighbours: tuple[PeerId, ...]) -> None:
        """``node`` announces its departure (``Protocol.leave``), leaves, and ``neighbours`` get ``PeerDown``."""
        if node not in self.alive:
            return
        self._apply(node, self.protocols[node].leave(self.now))
        self.alive.discard(node)
        self.alive_version += 1
        for peer in neighbours:
            if peer in self.alive:
                self._dispatch(peer, PeerDown(peer=node))

    def rejoin(self, node: PeerId, neighbours: tuple[PeerId, ...]) -> None:
        """``node`` comes back with the state it had; ``neighbours`` and the node get ``PeerUp``, and the
        protocol's ``resume`` lets it catch up after being away."""
        if node in self.alive:
            return
        self.alive.add(node)
        self.alive_version += 1
        for peer in neighbours:
            if peer in self.alive and peer != node:
                self._dispatch(peer, PeerUp(peer=node))
                self._dispatch(node, PeerUp(peer=peer))
        self._apply(node, self.protocols[node].resume(self.now))

    # ------------------------------------------------------------------ the loop

    def start(self) -> None:
        for node in sorted(self.protocols, key=_node_order):
            self._apply(node, self.protocols[node].start(self.now))

    def run(self, *, until: float = math.inf) -> float:
        """Start every node and process events until none are left, ``until`` passes, or ``stop()``."""
        with _setup_frozen():
            self.start()
            return self.resume(until=until)

    def resume(self, *, until: float = math.inf) -> float:
        # The hot loop of every run (about ten events per node and round): locals, no event objects for
        # messages to protocols that take the direct call, no _apply call for an empty answer.
        heap = self._heap
        pop = heapq.heappop
        alive = self.alive
        on_message = self._on_message
        protocols = self.protocols
        while heap and not self._stopped:
            time, seq, kind, node, payload = heap[0]
            if time > until:
                break
            pop(heap)
            self.now = time
            if kind == _DELIVER:
                # One entry per (sender, message, arrival time): its receivers in the order the Sends
                # came, exactly as consecutive entries of their own would have been popped.
                self._group = None
                message, receivers = payload
                for i, peer in enumerate(receivers):
                    if self._stopped:
                        heapq.heappush(heap, (time, seq, kind, node, (message, receivers[i:])))
                        break
                    if peer not in alive:
                        if type(message) is Compressed:
                            self.channels[node].lost(peer)
                        continue  # a message to a dead node is dropped on arrival
                    self.events_handled += 1
                    received = message
                    if type(message) is Compressed:  # each receiver rebuilds it from its own replica
                        got = self._decompress(node, peer, message)
                        if got is None:
                            continue
                        received = got
                    direct = on_message[peer]
                    if direct is not None:
                        actions = direct(node, received, time)
                    else:
                        actions = protocols[peer].handle(MessageReceived(peer=node, message=received), time)
                    if actions:
                        self._apply(peer, actions)
                continue
            if kind == _CALL:
                payload(self)
                continue
            if node not in alive:
                continue
            if kind == _TIMER:
                name, gen = payload
                if self._timer_gen.get((node, name)) != gen:
                    continue
                del self._timer_gen[(node, name)]
                event: Event = TimerFired(name=name)
            elif kind == _TRAINED:
                self._train_due(time, seq, node, payload)
                continue
            elif kind == _EVALUATE:
                self._evaluate(node, payload)
                continue
            else:  # _TRAINED_READY: trained before a stop(), handled now
                event = payload
            self._dispatch(node, event)
        return self.now

    def _train_due(self, time: float, seq: int, node: PeerId, payload: Any) -> None:
        """Train ``node`` and the live nodes whose training is due next at the same ``time`` (up to
        ``train_batch`` in all), then hand each its ``TrainingDone`` in that order, skipping a node that
        died meanwhile. After a ``stop()`` the rest go back on the heap, trained, under their own places."""
        heap = self._heap
        due = [(seq, node, payload)]
        while len(due) < self.train_batch and heap and heap[0][0] == time and heap[0][2] == _TRAINED:
            _, seq_, _, other, payload_ = heapq.heappop(heap)
            if other in self.alive:
                due.append((seq_, other, payload_))
        done = []
        for seq_, who, (round_, params, steps) in due:
            new, loss = self.worker.train(who, round_, params, steps)
            done.append((seq_, who, TrainingDone(round=round_, params=new, loss=loss)))
        for i, (_, who, event) in enumerate(done):
            if self._stopped:
                for entry in done[i:]:
                    heapq.heappush(heap, (time, entry[0], _TRAINED_READY, entry[1], entry[2]))
                return
            if who in self.alive:
                self._dispatch(who, event)

    def _evaluate(self, node: PeerId, batch: list[Evaluate]) -> None:
        """Evaluate ``batch`` on ``node``'s samples (together when the worker can) and answer each in order."""
        many = getattr(self.worker, "evaluate_many", None)
        if many is not None and len(batch) > 1:
            results = many(node, [a.params for a in batch], batch[0].samples)
        else:
            results = [self.worker.evaluate(node, a.params, a.samples) for a in batch]
        for action, (acc, loss, per_class, n) in zip(batch, results, strict=True):
            if node not in self.alive:
                return
            done = EvaluationDone(
                tag=action.tag, round=action.round, accuracy=acc, loss=loss, per_class=per_class, samples=n
            )
            if self._stopped:  # answered, handled when the run resumes (as trainings are)
                self._push(self.now, _TRAINED_READY, node, done)
                continue
            self._dispatch(node, done)

    def _dispatch(self, node: PeerId, event: Event) -> None:
        self.events_handled += 1
        self._apply(node, self.protocols[node].handle(event, self.now))

    def _apply(self, node: PeerId, actions: list[Action]) -> None:
        now = self.now
        i, n = 0, len(actions)
        while i < n:
            action = actions[i]
            i += 1
            if isinstance(action, Send):
                # A D-PSGD exchange sends one message object to every neighbour: take the whole run of
                # such Sends at once (one size, one count, one heap entry when every link is alike).
                message = action.message
                peers = [action.peer]
                while i < n and isinstance(nxt := actions[i], Send) and nxt.message is message:
                    peers.append(nxt.peer)
                    i += 1
                channel = self.channels.get(node) if self.channels else None
                if channel is None:
                    self._send(node, peers, message, now)
                else:
                    if self.keep_outbox:
                        self.outbox[node] = message
                    for wire_message, group in channel.outgoing(message, peers):
                        self._send(node, group, wire_message, now, outbox=False)
            elif isinstance(action, SetTimer):
                key = (node, action.name)
                gen = self._timer_gen.get(key, 0) + 1
                self._timer_gen[key] = gen
                self._push(max(action.deadline, now), _TIMER, node, (action.name, gen))
            elif isinstance(action, CancelTimer):
                self._timer_gen.pop((node, action.name), None)
            elif isinstance(action, Train):
                done = now + self.worker.duration(node, action.steps)
                self._push(done, _TRAINED, node, (action.round, action.params, action.steps))
            elif isinstance(action, RoundCompleted):
                for obs in self._round_obs:
                    obs.on_round(self, node, action, now)
            elif isinstance(action, PenalisePeer):
                self.penalties += 1
            elif isinstance(action, Evaluate):
                # A node's consecutive Evaluate actions (Bristle's candidates of a round) go to the worker
                # together: one batched product for linear heads on cached features (evaluate_many).
                batch = [action]
                while i < n and isinstance(nxt := actions[i], Evaluate) and nxt.samples == action.samples:
                    batch.append(nxt)
                    i += 1
                self._push(now, _EVALUATE, node, batch)

    def _decompress(self, sender: PeerId, peer: PeerId, message: Compressed) -> Message | None:
        """The model message ``peer``'s channel rebuilds from ``message``; None (counted) if it refuses."""
        assert self._limits is not None
        channel = self.channels.get(peer)
        try:
            if channel is None:
                raise WireError("codec-unexpected", "a compressed message to a node without a channel")
            return channel.incoming(sender, message, self._limits)
        except WireError as exc:
            self.codec_rejected[exc.reason] = self.codec_rejected.get(exc.reason, 0) + 1
            return None

    def _send(
        self, node: PeerId, peers: list[PeerId], message: Message, now: float, outbox: bool = True
    ) -> None:
        """``message`` from ``node`` to each of ``peers`` in turn: counted once per peer, sized once."""
        size_of = self._size_of
        if size_of[0] is message:
            size = size_of[1]
        else:
            size = self._size(message)
            self._size_of = (message, size)
        if self.keep_outbox and outbox:
            self.outbox[node] = message
        self.bytes_sent += size * len(peers)
        self.messages_sent += len(peers)
        network = self.network
        fixed = None if self._send_obs else network.fixed_delay(size)
        if fixed is not None:
            # Every message takes the same time and none is lost: what one _deliver_at per peer does.
            self._deliver_at(now + fixed, node, peers[0], message)
            assert self._group is not None
            self._group[4].extend(peers[1:])
            return
        for peer in peers:
            for obs in self._send_obs:
                obs.on_send(self, node, peer, message, size, now)
            delay = network.transit(node, peer, size, now)
            if delay is not None:
                self._deliver_at(now + delay, node, peer, message)
            elif type(message) is Compressed:
                self.channels[node].lost(peer)

    def _deliver_at(self, time: float, node: PeerId, peer: PeerId, message: Message) -> None:
        group = self._group
        if (
            group is not None
            and group[3] == self._seq
            and group[0] == time
            and group[1] is message
            and group[2] == node
        ):
            # Nothing was pushed since this sender's previous Send of the same message arriving at the
            # same time: one heap entry delivers both, in this order (what two consecutive entries do).
            group[4].append(peer)
            return
        receivers = [peer]
        self._seq += 1
        heapq.heappush(self._heap, (time, self._seq, _DELIVER, node, (message, receivers)))
        self._group = (time, message, node, self._seq, receivers)

    def _size(self, message: Message) -> int:
        """The encoded length of ``message``: what sending it costs in bytes, however it travels."""
        if isinstance(message, ModelUpdate):
            # A model message's length depends only on its two integers and its dimension.
            key = (message.round, message.step, message.params.numel())
            size = self._model_sizes.get(key, 0)
            if not size:
                if len(self._model_sizes) > 4096:
                    self._model_sizes.clear()
                size = self._model_sizes[key] = encoded_size(message)
            return size
        return encoded_size(message)


@contextmanager
def _setup_frozen() -> Iterator[None]:
    """Spare the cycle collector's full passes every object that exists when the run starts.

    A run allocates many short-lived containers (messages in flight, events, inboxes), which trigger
    collections; a full one walks every tracked object of the process (torch, the dataset, the graph: about
    200,000, some 90 ms a pass, four passes in a 1,000-node run of 20 rounds). ``gc.freeze`` moves the
    objects of the set-up out of those passes for the run: they are still freed by reference counting and
    only their cycles wait until the run ends. A caller that froze objects itself is left alone.
    """
    if gc.get_freeze_count() or not gc.isenabled():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _node_order(node: PeerId) -> tuple[int, str]:
    return (int(node), node) if node.isdigit() else (1 << 62, node)
