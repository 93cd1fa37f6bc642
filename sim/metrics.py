"""Per-round metrics over honest nodes, computed as rounds finish, without keeping every model.

For each round the collector keeps running sums of the honest models' deviations from a reference model
(the round's first report) and of their squared norms — enough for the consensus distance
``sqrt(mean_i ||x_i - mean(x)||^2) = sqrt(mean_i ||x_i - c||^2 - ||mean(x) - c||^2)`` for any ``c`` — and, on
evaluation rounds only, the models of the evaluated nodes. With ``c`` one of the models the terms are as
small as the spread itself (the subtraction cancels a factor of about two, not the models' norm), so
float32 vectors (three cheap passes per report) are accurate where raw sums of models that agree to five
digits would need float64. A round is written out when every live honest node has finished
it (or at the end of the run), in round order.

A *sampled* protocol (MoDeST: only a round's sample reports it; ``ProtocolSpec.report == "sampled"``) never
has every live node report a round, so with ``sampled=True`` a round is written out as soon as a report of
a later round arrives, and at most ``eval_cap`` of its reported models are evaluated.

On evaluation rounds a row also carries ``acc_avg``/``loss_avg``: the accuracy and loss of the average of the
round's honest models (every honest node that reported the round, not only the evaluated ones), the figure
papers report; the running sums give that average for free. ``live`` counts the honest nodes that reported
the round or were alive at its latest report (Byzantine nodes are never counted).

:meth:`Metrics.node_rows` gives one row per honest node after the run (``nodes.jsonl``): the rounds it
completed, its last model's accuracy and loss, and that model's distance to the mean of the live honest
nodes' last models.

Evaluated rows (and the last one) carry ``counters``: the sum over the honest nodes of their protocol's
``stats()`` (rule failures, non-finite rows dropped, rejected messages by reason, ...), the same counters a
real node exports; summing them over 1,000 nodes every round would cost more than a MoDeST round's protocol
work, so the other rows leave them out.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from phalanx.aggregation import fused
from phalanx.gossip.events import PeerId

if TYPE_CHECKING:
    from phalanx.sim.engine import Engine


@dataclass(slots=True)
class _Pending:
    count: int = 0
    ref: torch.Tensor | None = None  # the round's first honest model: deviations are taken from it
    total: torch.Tensor | None = None  # sum of (x_i - ref), float32
    sq: float = 0.0  # sum of ||x_i - ref||^2
    nodes: set[PeerId] = field(default_factory=set)
    models: dict[PeerId, torch.Tensor] = field(default_factory=dict)
    # traffic and time at the round's latest report: a sampling protocol's round (only its trainers
    # report it) is written out at the end of the run, but its bytes are those sent by then
    at: tuple[int, int, float] = (0, 0, 0.0)
    live: frozenset[PeerId] | set[PeerId] = frozenset()  # the live honest nodes at the latest report


class Metrics:
    def __init__(
        self,
        *,
        honest: list[PeerId],
        eval_nodes: frozenset[PeerId],
        rounds: int,
        eval_every: int,
        evaluate: Callable[[torch.Tensor], tuple[float, float]],
        start: float,
        on_row: Callable[[dict[str, Any]], None] | None = None,
        sampled: bool = False,
        eval_cap: int = 0,
        evaluate_node: Callable[[torch.Tensor, PeerId | None], tuple[float, float]] | None = None,
    ) -> None:
        self.honest = frozenset(honest)
        self.eval_nodes = eval_nodes
        self.rounds = rounds
        self.eval_every = eval_every
        self.evaluate = evaluate
        # when set, it evaluates a node's model with that node's own local buffers (None: the average model)
        self.evaluate_node = evaluate_node
        self.start = start
        self.on_row = on_row
        self.rows: list[dict[str, Any]] = []
        self.engine: Engine | None = None
        self._pending: dict[int, _Pending] = {}
        self._live: frozenset[PeerId] | set[PeerId] = frozenset()
        self._live_version = -1
        self._next = 0
        self._scratch: torch.Tensor | None = None
        self.sampled = sampled
        self.eval_cap = eval_cap  # sampled: the most reported models evaluated per round (0: all)
        self._latest = -1  # the newest round any honest node reported
        # per honest node: rounds completed, and its latest round and model (for nodes.jsonl)
        self.completed: dict[PeerId, int] = {}
        self.last: dict[PeerId, tuple[int, torch.Tensor]] = {}
        self._evaluated: dict[PeerId, tuple[int, float, float]] = {}  # node -> (round, acc, loss)

    def _evaluate(self, x: torch.Tensor, node: PeerId | None) -> tuple[float, float]:
        if self.evaluate_node is not None:
            return self.evaluate_node(x, node)
        return self.evaluate(x)

    def is_eval_round(self, r: int) -> bool:
        return (r + 1) % self.eval_every == 0 or r == self.rounds - 1 or r == 0

    def on_round(self, engine: Engine, node: PeerId, action: Any, now: float) -> None:
        if node not in self.honest or action.round < self._next:
            return
        p = self._pending.get(action.round)
        if p is None:
            p = self._pending[action.round] = _Pending()
        elif node in p.nodes:
            return
        x = action.params
        self.completed[node] = self.completed.get(node, 0) + 1
        self.last[node] = (action.round, x)
        p.nodes.add(node)
        p.count += 1
        if p.ref is None:
            p.ref = x  # never written to: the protocol hands out tensors it no longer modifies
            p.total = torch.zeros_like(x)
        else:
            assert p.total is not None
            fast = fused.accumulate_deviation(x, p.ref, p.total)  # one pass (native kernel) where built
            if fast is not None:
                sq = fast
            else:
                scratch = self._scratch
                if scratch is None or len(scratch) != len(x):
                    scratch = self._scratch = torch.empty_like(x)
                dev = torch.sub(x, p.ref, out=scratch)
                p.total.add_(dev)
                sq = float(dev.dot(dev))
            if sq == math.inf:  # float32 overflow of a finite but huge deviation: redo it in float64
                sq = float(torch.linalg.vector_norm(x.double() - p.ref.double())) ** 2
            p.sq += sq
        p.at = (engine.bytes_sent, engine.messages_sent, now)
        if self._live_version != engine.alive_version:
            self._live = self.honest & engine.alive  # a new set: earlier rounds keep theirs
            self._live_version = engine.alive_version
        p.live = self._live
        if (
            node in self.eval_nodes
            and self.is_eval_round(action.round)
            and not (self.eval_cap and len(p.models) >= self.eval_cap)
        ):
            p.models[node] = x
        if action.round > self._latest:
            self._latest = action.round
        self._flush(engine, final=False)

    def _flush(self, engine: Engine, *, final: bool) -> None:
        while self._next in self._pending:
            p = self._pending[self._next]
            if not final and self.sampled:
                if self._next >= self._latest:
                    return  # its sample may still be reporting: written when a later round reports
            elif not final:
                if self._live_version != engine.alive_version:
                    self._live = self.honest & engine.alive
                    self._live_version = engine.alive_version
                # Cheap necessary condition first: as many reports as live honest nodes.
                if p.count < len(self._live) or not self._live <= p.nodes:
                    return
            self._emit(engine, self._next, p)
            del self._pending[self._next]
            self._next += 1

    def finish(self) -> None:
        assert self.engine is not None
        for r in sorted(self._pending):
            self._next = r
            self._flush(self.engine, final=True)

    def counters(self, engine: Engine) -> dict[str, float]:
        """The honest nodes' protocol counters, summed."""
        total: dict[str, float] = {}
        protocols = engine.protocols
        channels = getattr(engine, "channels", None) or {}
        for node in self.honest:
            protocol = protocols.get(node)
            if protocol is None:
                continue
            for key, value in protocol.stats().items():
                total[key] = total.get(key, 0) + value
            channel = channels.get(node)
            if channel is not None:  # compression (issue 18): differences, keyframes, out-of-sync drops
                for key, value in channel.stats().items():
                    total["codec_" + key] = total.get("codec_" + key, 0) + value
        return dict(sorted(total.items()))

    def privacy(self, engine: Engine, nodes: Any = None) -> dict[PeerId, tuple[float, float]]:
        """Each honest node's (epsilon, delta) spent so far, for runs with differential privacy."""
        out: dict[PeerId, tuple[float, float]] = {}
        for node in self.honest if nodes is None else nodes:
            channel = engine.channels.get(node)
            spent = channel.spent() if channel is not None else None
            if spent is not None:
                out[node] = (spent.epsilon, spent.delta)
        return out

    def _emit(self, engine: Engine, r: int, p: _Pending) -> None:
        row: dict[str, Any] = {"round": r}
        assert p.total is not None
        shift = p.total.double() / p.count  # mean(x) - ref
        dist2 = max(0.0, p.sq / p.count - float(shift.dot(shift)))
        accs, losses = [], []
        for node in sorted(p.models, key=lambda n: (len(n), n)):
            acc, loss = self._evaluate(p.models[node], node)
            self._evaluated[node] = (r, acc, loss)
            accs.append(acc)
            losses.append(loss if math.isfinite(loss) else float("nan"))
        acc_avg = loss_avg = None
        if accs:
            assert p.ref is not None
            # the average of the round's honest models: ref + mean deviation (a new tensor; ref is shared)
            acc_avg, loss_avg = self._evaluate(torch.div(p.total, p.count).add_(p.ref), None)
            if not math.isfinite(loss_avg):
                loss_avg = float("nan")
        if accs:
            row.update(
                acc_mean=sum(accs) / len(accs),
                acc_min=min(accs),
                acc_max=max(accs),
                loss_mean=sum(losses) / len(losses),
                loss_min=min(losses),
                loss_max=max(losses),
                evaluated=len(accs),
                acc_avg=acc_avg,
                loss_avg=loss_avg,
            )
        else:
            row.update(
                acc_mean=None,
                acc_min=None,
                acc_max=None,
                loss_mean=None,
                loss_min=None,
                loss_max=None,
                evaluated=0,
                acc_avg=None,
                loss_avg=None,
            )
        row.update(
            consensus=math.sqrt(dist2),
            honest_reported=p.count,
            bytes=p.at[0],
            messages=p.at[1],
            live=len(p.nodes | p.live),
            virtual_time=round(p.at[2], 6),
            wall_time=round(time.perf_counter() - self.start, 3),
        )
        spent = self.privacy(engine) if getattr(engine, "channels", None) else {}
        if spent:  # differential privacy: the worst honest node's epsilon after this round, and delta
            row.update(
                dp_epsilon=max(e for e, _ in spent.values()), dp_delta=max(d for _, d in spent.values())
            )
        if p.models or r == self.rounds - 1:
            row["counters"] = self.counters(engine)
        self.rows.append(row)
        if self.on_row is not None:
            self.on_row(row)

    def node_rows(self, alive: set[PeerId] | frozenset[PeerId]) -> list[dict[str, Any]]:
        """One row per honest node, in id order: ``rounds`` completed, ``last_round``, ``alive`` at the end,
        ``acc``/``loss`` of its last model (the evaluation of that round when it had one), and ``distance``,
        ``||x_i - mean||`` to the mean of the last models of the honest nodes alive at the end (of all that
        reported, when none is)."""
        order = sorted(self.honest, key=lambda n: (len(n), n))
        live = [n for n in order if n in self.last and n in alive] or [n for n in order if n in self.last]
        mean = None
        if live:
            mean = torch.zeros_like(self.last[live[0]][1], dtype=torch.float64)
            for n in live:
                mean.add_(self.last[n][1].double())
            mean.div_(len(live))
        rows: list[dict[str, Any]] = []
        spent = self.privacy(self.engine) if getattr(self.engine, "channels", None) else {}
        for node in order:
            row: dict[str, Any] = {
                "node": int(node) if node.isdigit() else node,
                "alive": node in alive,
                "rounds": self.completed.get(node, 0),
            }
            if node in self.last and mean is not None:
                r, x = self.last[node]
                seen = self._evaluated.get(node)
                acc, loss = (seen[1], seen[2]) if seen and seen[0] == r else self._evaluate(x, node)
                row.update(
                    last_round=r,
                    acc=acc,
                    loss=loss if math.isfinite(loss) else None,
                    distance=float(torch.linalg.vector_norm(x.double() - mean)),
                )
            else:
                row.update(last_round=None, acc=None, loss=None, distance=None)
            if node in spent:
                row.update(dp_epsilon=spent[node][0], dp_delta=spent[node][1])
            rows.append(row)
        return rows
