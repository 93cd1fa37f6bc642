"""Compressed model payloads through the node runtime (in-memory transport): runtimes learn with a codec
and checkpoint their channel; hostile compressed frames are dropped, counted and struck (issue 18)."""

from __future__ import annotations

import itertools

import torch
import trio

from phalanx.gossip.compression import codec_from_spec
from phalanx.gossip.compression.channel import OUT_OF_SYNC, Channel, Privacy, layout_for
from phalanx.gossip.dpsgd import DPSGD, DPSGDConfig
from phalanx.gossip.messages import Compressed, ModelUpdate, encode
from phalanx.gossip.wire import Limits, pack
from phalanx.node import checkpoint as ckpt
from phalanx.node.bans import BanList
from phalanx.node.learner import Learner
from phalanx.node.metrics import Metrics
from phalanx.node.runtime import NodeRuntime, RuntimeSettings
from phalanx.node.transport import MemoryNetwork

from .test_runtime import LogWatch, _learner, _records

SPECS = ["fp16", "bf16", "int8:16", "topk:0.1", "randk:0.1", "lowrank:2", "seeds:16"]


def _channel(learner: Learner, spec: str | None, privacy: Privacy | None = None, seed: int = 0) -> Channel:
    trainer = learner.trainer
    layout = layout_for((p.shape for p in trainer.module.parameters()), learner.dim)
    return Channel(
        reference=trainer.initial,
        codec=codec_from_spec(spec, layout=layout) if spec else None,
        privacy=privacy,
        rng=torch.Generator().manual_seed(seed),
        shared_reference=False,
    )


async def _ring(tmp_path, spec: str | None, privacy: Privacy | None = None) -> list[LogWatch]:  # type: ignore[no-untyped-def]
    n, rounds = 3, 5
    learners = [_learner(n, i) for i in range(n)]
    limits = Limits(dim=learners[0].dim)
    net = MemoryNetwork(limits=limits)
    logs = [LogWatch() for _ in range(n)]
    async with net.run(), trio.open_nursery() as nursery:
        names = [f"n{i}" for i in range(n)]
        for i in range(n):
            neighbours = (names[(i - 1) % n], names[(i + 1) % n])
            protocol = DPSGD(
                DPSGDConfig(neighbours=neighbours, rounds=rounds, round_timeout=5), learners[i].get_vector()
            )
            runtime = NodeRuntime(
                protocol=protocol,
                transport=net.transport(names[i]),
                learner=learners[i],
                limits=limits,
                metrics=Metrics(),
                bans=BanList(),
                log=logs[i],
                settings=RuntimeSettings(
                    rounds=rounds, linger=0.2, checkpoint_path=tmp_path / names[i] / "c.bin"
                ),
                channel=_channel(learners[i], spec, privacy, seed=i),
            )
            nursery.start_soon(runtime.run)
    return logs


async def test_runtimes_learn_through_a_codec_with_fewer_bytes_and_checkpoint_the_channel(tmp_path) -> None:  # type: ignore[no-untyped-def]
    plain = await _ring(tmp_path / "plain", None)
    int8 = await _ring(tmp_path / "int8", "int8:16")
    for logs in (plain, int8):
        rows = _records(logs[0], "round")
        assert len(rows) == 5 and rows[-1]["accuracy"] > rows[0]["accuracy"]
        assert all(r["rejected"] == 0 for r in rows)
    # the first message to each neighbour is a keyframe (float32), the four after it int8 differences
    plain_out = _records(plain[0], "round")[-1]["bytes_out"]
    int8_out = _records(int8[0], "round")[-1]["bytes_out"]
    assert int8_out < 0.5 * plain_out
    learner = _learner(3, 0)
    saved = ckpt.load(tmp_path / "int8" / "n0" / "c.bin", dim=learner.dim)
    assert saved is not None and "channel" in saved.extra
    restored = _channel(learner, "int8:16")
    restored.restore(saved.extra["channel"])
    assert restored.seq == 5 and set(restored.replicas) == {"n1", "n2"}


async def test_privacy_reports_epsilon_in_each_round_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    logs = await _ring(tmp_path, "topk:0.5", Privacy(clip=1.0, sigma=1.0))
    eps = [r["dp_epsilon"] for r in _records(logs[0], "round")]
    assert len(eps) == 5 and all(a < b for a, b in itertools.pairwise(eps))


def _hostile(spec: str, dim: int) -> dict[str, bytes]:
    """Frames a hostile peer sends a node running ``spec``: the first is a valid keyframe."""
    x = torch.randn(dim)
    sender = Channel(
        reference=torch.zeros(dim), codec=codec_from_spec(spec, layout=_LAYOUT[0]), shared_reference=False
    )
    ((key, _),) = sender.outgoing(ModelUpdate(round=50, params=x), ["me"])
    ((diff, _),) = sender.outgoing(ModelUpdate(round=51, params=x), ["me"])
    assert isinstance(key, Compressed) and isinstance(diff, Compressed) and diff.encoded is not None
    fields = diff.to_fields()
    truncated = {**fields, "z": {**fields["z"], "x": diff.encoded.data[:-1] or b"\x00"}}
    wrong = {**fields, "z": {**fields["z"], "c": "fp16" if spec != "fp16" else "bf16"}}
    skipped = {**fields, "q": fields["q"] + 5}
    return {
        "keyframe": encode(key),
        "codec-bad-length": pack(Compressed.TYPE, truncated),
        "codec-wrong-codec": pack(Compressed.TYPE, wrong),
        OUT_OF_SYNC: pack(Compressed.TYPE, skipped),
        "difference": encode(diff),
        "bad-field": pack(Compressed.TYPE, {**fields, "k": "ping"}),
    }


_LAYOUT: list = [None]


async def test_hostile_compressed_frames_are_dropped_counted_and_struck_for_every_codec() -> None:
    learner = _learner(2, 0)
    layout = layout_for((p.shape for p in learner.trainer.module.parameters()), learner.dim)
    _LAYOUT[0] = layout
    limits = Limits(dim=learner.dim)
    for spec in SPECS:
        net = MemoryNetwork(limits=limits)
        log = LogWatch()
        metrics = Metrics()
        async with net.run():
            me, peer = net.transport("me"), net.transport("peer")
            protocol = DPSGD(
                DPSGDConfig(neighbours=("peer",), rounds=0, round_timeout=0.05), learner.get_vector()
            )
            runtime = NodeRuntime(
                protocol=protocol,
                transport=me,
                learner=learner,
                limits=limits,
                metrics=metrics,
                bans=BanList(threshold=3),
                log=log,
                settings=RuntimeSettings(),
                channel=_channel(learner, spec),
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(runtime.run)
                frames = _hostile(spec, learner.dim)
                await peer.send("me", frames["keyframe"])
                await peer.send("me", frames[OUT_OF_SYNC])  # not a strike: an honest peer can cause it
                await peer.send("me", frames["codec-bad-length"])
                await peer.send("me", frames["codec-wrong-codec"])
                await peer.send("me", frames["difference"])  # valid: accepted, the node is in sync still
                await log.until("rejected", 3)
                await peer.send("me", frames["bad-field"])  # the third strike
                await log.until("banned", 1)
                nursery.cancel_scope.cancel()
        reasons = [r["reason"] for r in _records(log, "rejected")]
        assert reasons[:3] == [OUT_OF_SYNC, "codec-bad-length", "codec-wrong-codec"], (spec, reasons)
        assert metrics.rejected["codec-bad-length"] >= 1 and runtime.channel.replicas["peer"][0] == 2, spec
        assert metrics.messages_in == 2, spec  # the keyframe and the valid difference reached the protocol
