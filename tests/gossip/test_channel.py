"""The compression/privacy channel: difference coding keeps every receiver's replica equal to the sender's
public copy, keyframes resynchronise, hostile frames are refused with a reason, privacy noise comes before
the codec, and the state survives a checkpoint."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from phalanx.gossip.compression import Layout, codec_from_spec
from phalanx.gossip.compression.channel import (
    OUT_OF_SYNC,
    Channel,
    ChannelSettingsError,
    Privacy,
    channel_settings,
)
from phalanx.gossip.messages import Compressed, ModelUpdate, TrainedModel, decode, encode
from phalanx.gossip.wire import Limits, WireError

SMALL = Layout.of([(12, 20), (12,), (5, 12), (5,)])  # 317 values
DIM = SMALL.dim
SPECS = ["fp16", "bf16", "int8:16", "topk:0.1", "randk:0.1", "lowrank:2", "seeds:32"]
LIMITS = Limits(dim=DIM)


def channel(
    spec: str | None, *, seed: int = 0, privacy: Privacy | None = None, shared: bool = True
) -> Channel:
    codec = codec_from_spec(spec, layout=SMALL) if spec else None
    return Channel(
        reference=torch.zeros(DIM),
        codec=codec,
        privacy=privacy,
        rng=torch.Generator().manual_seed(seed),
        shared_reference=shared,
    )


def wire(message: Compressed) -> Compressed:
    """Through the real wire format, as a peer receives it."""
    got = decode(encode(message), LIMITS)
    assert isinstance(got, Compressed)
    return got


@pytest.mark.parametrize("spec", SPECS)
@given(data=st.data())
def test_replicas_track_the_public_copy_whatever_is_lost(spec: str, data: st.DataObject) -> None:
    """Random sends to random subsets of three peers, some lost (and reported): every delivery decodes, and
    the receiver's rebuilt model is exactly the sender's public copy."""
    sender = channel(spec)
    receivers = {p: channel(spec) for p in "abc"}
    torch.manual_seed(data.draw(st.integers(0, 100)))
    for r in range(data.draw(st.integers(1, 6))):
        x = torch.randn(DIM)
        peers = data.draw(st.lists(st.sampled_from("abc"), min_size=1, max_size=3, unique=True))
        lost = data.draw(st.sets(st.sampled_from(peers)))
        for message, group in sender.outgoing(ModelUpdate(round=r, params=x), peers):
            assert isinstance(message, Compressed)
            for p in group:
                if p in lost:
                    sender.lost(p)
                    continue
                got = receivers[p].incoming("s", wire(message), LIMITS)
                assert isinstance(got, ModelUpdate) and got.round == r
                assert torch.equal(got.params, sender.x_hat)


def test_a_fixed_neighbourhood_gets_differences_and_converges() -> None:
    """D-PSGD's pattern: the same peers every round get differences only, and the replica approaches x."""
    sender, receiver = channel("topk:0.1"), channel("topk:0.1")
    x = torch.randn(DIM)
    for r in range(60):
        (message, _group), *rest = sender.outgoing(ModelUpdate(round=r, params=x), ["a"])
        assert not rest and message.encoded is not None  # type: ignore[union-attr]
        got = receiver.incoming("s", wire(message), LIMITS)  # type: ignore[arg-type]
    assert float((got.params - x).norm() / x.norm()) < 1e-3  # type: ignore[union-attr]
    assert sender.stats()["keyframes_sent"] == 0


def test_peers_of_unknown_state_get_a_keyframe_then_differences() -> None:
    sender, receiver = channel("int8:16", shared=False), channel("int8:16", shared=False)
    x = torch.randn(DIM)
    first = sender.outgoing(ModelUpdate(round=0, params=x), ["a"])
    assert [m.params is not None for m, _ in first] == [True]  # type: ignore[union-attr]
    receiver.incoming("s", wire(first[0][0]), LIMITS)  # type: ignore[arg-type]
    second = sender.outgoing(ModelUpdate(round=1, params=x), ["a", "b"])
    kinds = {tuple(g): m.encoded is not None for m, g in second}  # type: ignore[union-attr]
    assert kinds == {("a",): True, ("b",): False}


def test_a_missed_difference_is_dropped_as_out_of_sync() -> None:
    sender, receiver = channel("topk:0.1"), channel("topk:0.1")
    x = torch.randn(DIM)
    sender.outgoing(ModelUpdate(round=0, params=x), ["a"])  # never delivered, never reported
    ((message, _),) = sender.outgoing(ModelUpdate(round=1, params=x), ["a"])
    with pytest.raises(WireError) as err:
        receiver.incoming("s", wire(message), LIMITS)  # type: ignore[arg-type]
    assert err.value.reason == OUT_OF_SYNC and receiver.stats()["out_of_sync"] == 1


def test_model_messages_of_every_kind_keep_their_fields() -> None:
    sender, receiver = channel("fp16"), channel("fp16")
    x = torch.randn(DIM)
    ((message, _),) = sender.outgoing(TrainedModel(round=7, params=x), ["a"])
    got = receiver.incoming("s", wire(message), LIMITS)  # type: ignore[arg-type]
    assert isinstance(got, TrainedModel) and got.round == 7


def test_an_inactive_channel_passes_messages_and_refuses_compressed_ones() -> None:
    plain = channel(None)
    m = ModelUpdate(round=0, params=torch.zeros(DIM))
    assert plain.outgoing(m, ["a"]) == [(m, ["a"])]
    ((z, _),) = channel("fp16").outgoing(m, ["a"])
    with pytest.raises(WireError) as err:
        plain.incoming("s", z, LIMITS)  # type: ignore[arg-type]
    assert err.value.reason == "codec-unexpected"


# ------------------------------------------------------------------ hostile frames


def _difference(spec: str) -> Compressed:
    ((message, _),) = channel(spec).outgoing(ModelUpdate(round=0, params=torch.randn(DIM)), ["a"])
    assert isinstance(message, Compressed) and message.encoded is not None
    return message


def _with(message: Compressed, **changes: object) -> bytes:
    fields = message.to_fields()
    fields["z"] = {**fields["z"], **changes}
    from phalanx.gossip.wire import pack

    return pack(Compressed.TYPE, fields)


@pytest.mark.parametrize("spec", SPECS)
def test_hostile_encodings_are_refused_with_a_codec_reason(spec: str) -> None:
    receiver = channel(spec)
    good = _difference(spec)
    assert good.encoded is not None
    hostile = {
        "codec-bad-length": _with(good, x=good.encoded.data[:-1] or b"\x00" * 9),
        "codec-wrong-codec": _with(good, c="fp16" if spec != "fp16" else "bf16"),
        "codec-wrong-dimension": _with(good, d=DIM + 1),
        "codec-bad-field": _with(good, n=-1),
    }
    for reason, body in hostile.items():
        with pytest.raises(WireError) as err:
            message = decode(body, LIMITS)
            assert isinstance(message, Compressed)
            receiver.incoming("s", message, LIMITS)
        assert err.value.reason.startswith("codec-"), (reason, err.value.reason)
    # and a legitimate one still decodes afterwards: nothing was half-applied
    assert receiver.incoming("s", wire(good), LIMITS).round == 0  # type: ignore[union-attr]


def test_bad_envelopes_are_refused() -> None:
    from phalanx.gossip.wire import pack

    for fields in (
        {"k": "ping", "f": {"r": 0}, "q": 1, "p": b"\x00" * 4 * DIM},  # not a model message
        {"k": "model", "f": {"r": 0, "p": b""}, "q": 1, "p": b"\x00" * 4 * DIM},  # vector inside 'f'
        {"k": "model", "f": {"r": 0}, "q": 0, "z": {"c": "fp16", "d": DIM}},  # a difference to copy -1
        {"k": "model", "f": {"r": 0}, "q": 1},  # neither payload
        {"k": "model", "f": {"r": 0}, "q": 1, "p": b"\xff" * 4 * DIM},  # a NaN keyframe
        {"k": "model", "f": {"r": 0}, "q": 1, "p": b"\x00" * 4 * (DIM - 1)},  # a short keyframe
    ):
        with pytest.raises(WireError):
            decode(pack(Compressed.TYPE, fields), LIMITS)
    receiver = channel("fp16")
    bad_inner = Compressed(kind="model", fields={"r": -1}, seq=1, params=torch.zeros(DIM))
    with pytest.raises(WireError):  # the carried message's own fields are checked when it is rebuilt
        receiver.incoming("s", bad_inner, LIMITS)
    assert "s" not in receiver.replicas  # and nothing of it was kept


# ------------------------------------------------------------------ privacy


def test_noise_is_in_what_is_sent_and_the_accountant_counts_each_release() -> None:
    private = channel(None, privacy=Privacy(clip=1.0, sigma=2.0))
    x = torch.zeros(DIM)
    x[0] = 100.0
    epsilons = []
    for r in range(3):
        ((m, _),) = private.outgoing(ModelUpdate(round=r, params=x), ["a"])
        spent = private.spent()
        assert spent is not None
        epsilons.append(spent.epsilon)
    assert epsilons[0] < epsilons[1] < epsilons[2] and math.isfinite(epsilons[2])
    sent = m.params  # type: ignore[union-attr]
    # clipped to 1 per release (three releases) plus N(0, 4) per coordinate: far from x, noise everywhere
    assert float(sent[0]) < 10 and float((sent[1:] != 0).float().mean()) == 1.0
    assert 1.5 < float(sent[1:].std()) / math.sqrt(3) < 2.5


def test_noise_comes_before_the_codec() -> None:
    """topk of a noised update picks noise coordinates: the one large coordinate of x is not all it sends."""
    private = channel("topk:0.1", privacy=Privacy(clip=1.0, sigma=5.0))
    x = torch.zeros(DIM)
    x[:5] = 50.0
    ((m, _),) = private.outgoing(ModelUpdate(round=0, params=x), ["a"])
    index = torch.frombuffer(bytearray(m.encoded.index), dtype=torch.int32)  # type: ignore[union-attr]
    assert (index >= 5).sum() > 10  # noised before encoding: most picked coordinates are noise


def test_settings_are_checked_in_one_line() -> None:
    for kwargs, words in (
        ({"compress": "topk"}, "fraction"),
        ({"compress": "zip"}, "unknown codec"),
        ({"dp_sigma": 1.0}, "--dp-clip"),
        ({"dp_clip": 1.0, "dp_sigma": 1.0, "dp_epsilon": 3.0}, "give one"),
    ):
        with pytest.raises(ChannelSettingsError, match=words) as err:
            channel_settings(**kwargs)  # type: ignore[arg-type]
        assert "\n" not in str(err.value)
    settings = channel_settings(dp_clip=1.0, dp_epsilon=3.0, releases=100)
    assert settings.privacy is not None and 10 < settings.privacy.sigma < 20  # ~14.9 (docs/compression.md)


def test_the_state_survives_a_checkpoint() -> None:
    import msgpack

    a, b = channel("lowrank:2", seed=1), channel("lowrank:2", seed=1)
    rx = channel("lowrank:2")
    x = torch.randn(DIM)
    for r in range(3):
        ((m, _),) = a.outgoing(ModelUpdate(round=r, params=x), ["a"])
        rx.incoming("s", wire(m), LIMITS)  # type: ignore[arg-type]
    b.restore(msgpack.unpackb(msgpack.packb(a.to_fields(), use_bin_type=True), raw=False))
    rx2 = channel("lowrank:2")
    rx2.restore(msgpack.unpackb(msgpack.packb(rx.to_fields(), use_bin_type=True), raw=False))
    a.rng.manual_seed(5)
    b.rng.manual_seed(5)
    ((ma, _),) = a.outgoing(ModelUpdate(round=3, params=x), ["a"])
    ((mb, _),) = b.outgoing(ModelUpdate(round=3, params=x), ["a"])
    # after a restart every peer gets a keyframe first (it may hold a copy sent after the checkpoint)...
    assert ma.encoded is not None and mb.params is not None  # type: ignore[union-attr]
    assert torch.equal(a.x_hat, b.x_hat)  # ... of the same copy: the codec state and warm start came back
    assert torch.equal(rx2.incoming("s", wire(mb), LIMITS).params, b.x_hat)  # type: ignore[arg-type,union-attr]
    ((ma, _),) = a.outgoing(ModelUpdate(round=4, params=x), ["a"])
    ((mb, _),) = b.outgoing(ModelUpdate(round=4, params=x), ["a"])
    assert ma.encoded == mb.encoded  # type: ignore[union-attr]
    assert torch.equal(rx2.incoming("s", wire(mb), LIMITS).params, b.x_hat)  # type: ignore[arg-type,union-attr]
    with pytest.raises(ValueError):
        b.restore({"seq": 1, "x_hat": b"\x00", "peers": {}, "replicas": {}})


def test_seeds_differences_are_damped_so_the_copy_converges() -> None:
    """seeds:K's estimate is unbiased but not contractive: added whole, x - x_hat grows without bound;
    the channel's damped step makes it shrink."""
    sender, receiver = channel("seeds:32"), channel("seeds:32")
    x = torch.randn(DIM)
    errors = []
    for r in range(100):
        ((m, _),) = sender.outgoing(ModelUpdate(round=r, params=x), ["a"])
        got = receiver.incoming("s", wire(m), LIMITS)  # type: ignore[arg-type]
        errors.append(float((got.params - x).norm() / x.norm()))  # type: ignore[union-attr]
    assert errors[-1] < 0.1 and max(errors) < 2
