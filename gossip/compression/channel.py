"""The compression and privacy layer between a protocol and the transport: one :class:`Channel` per node.

Protocols are untouched: they emit ``Send`` actions with ordinary model messages (``ModelUpdate``,
``TrainedModel``, ``AggregatedModel``) and receive ordinary ones. The runner (``sim/engine.py``, or
``node/runtime.py`` for a real node) passes each outgoing model message through :meth:`Channel.outgoing`
and each incoming :class:`~phalanx.gossip.messages.Compressed` one through :meth:`Channel.incoming`.

**Difference coding against a public copy** (CHOCO-gossip, Koloskova et al. 2019). A lossy codec applied to
parameters delivers a sparse, low-rank or noisy *model*; applied to differences it delivers a model that
converges to the sender's. Each sender keeps ``x_hat``, the copy of its model its receivers hold, and a
sequence number ``seq``. To send ``x`` it encodes ``C(x - x_hat)``, decodes that itself, and sets
``x_hat += decoded`` (``seq += 1``); a receiver keeps a replica of ``x_hat`` per sender and adds the same
decoded vector. ``x - x_hat`` is the error memory (what has not yet been delivered), so codecs run with
their own error feedback off; nothing is lost, only delayed.

**Who can decode a difference.** A difference applies only to a receiver that holds the sender's previous
copy, ``x_hat[seq - 1]``. The sender tracks which copy each peer holds: every peer starts at ``seq`` 0 (the
shared initial model) when ``shared_reference`` says the run has one (the simulator), else unknown (a real
node: its peers may have other seeds or checkpoints). A peer that holds ``x_hat[seq - 1]`` gets the
difference; any other peer gets a **keyframe**, ``x_hat[seq]`` dense in float32, after which it is in sync.
So:

- D-PSGD and its family (fixed neighbours, a message every round): after the first round every message is
  a difference. The full saving.
- Epidemic Learning and MoDeST (each round a fresh sample of receivers): a receiver holds the previous copy
  only when it was also sampled last time, so most messages are keyframes: correct, but saving little
  (``docs/compression.md`` states this). No guessing: a codec never touches raw parameters.
- A message the runner knows was lost (the simulator's loss, a dead receiver, a real send that failed, a
  peer that disconnected) makes the next one to that peer a keyframe (:meth:`Channel.lost`). A difference
  that still reaches a receiver out of sync (it missed one the sender believes delivered) is dropped as
  ``codec-out-of-sync`` and counted, not struck: an honest sender can cause it.

**Differential privacy.** With ``privacy`` set, the vector released each message is ``clip(x - x_hat, C) +
N(0, sigma^2 C^2)`` (:func:`~phalanx.gossip.privacy.gaussian_mechanism`) **before** encoding; ``x_hat`` and
keyframes are then functions of released (noised) vectors, i.e. post-processing, so every codec and every
keyframe keeps the guarantee. The unit is the node's update against its public copy; each release is one
step of the node's :class:`~phalanx.gossip.privacy.PrivacyAccountant`. Without a codec, privacy alone sends
``x_hat[seq]`` dense (as a keyframe, 4 bytes a value like float32).

Sans-I/O: no clock, no sockets; randomness from the ``torch.Generator`` given. Decoding is bounded by the
codec's checks (:class:`~phalanx.gossip.compression.base.CodecError`), and replicas are capped
(``max_replicas``, least recently used first out).
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from phalanx.gossip.compression.base import (
    DEFAULT_LIMITS,
    Codec,
    CodecError,
    CodecState,
    DecodeLimits,
    all_finite,
    float32_from_bytes,
    vector_to_bytes,
)
from phalanx.gossip.compression.seeds import SeedsCodec
from phalanx.gossip.messages import (
    MESSAGE_TYPES,
    MODEL_TYPES,
    AggregatedModel,
    Compressed,
    Message,
    ModelUpdate,
    TrainedModel,
)
from phalanx.gossip.privacy import PrivacyAccountant, PrivacySpent, gaussian_mechanism
from phalanx.gossip.wire import Limits, WireError

_ONE = b"\x00\x00\x00\x00"  # one float32 zero: the stand-in vector of the fields check

#: A peer whose copy of this node's ``x_hat`` is unknown: it gets a keyframe.
UNKNOWN = -1

#: Out-of-sync differences are dropped and counted under this reason, never struck.
OUT_OF_SYNC = "codec-out-of-sync"


@dataclass(frozen=True, slots=True, kw_only=True)
class Privacy:
    """The Gaussian mechanism's settings: clip norm ``clip`` (C), noise multiplier ``sigma``, and ``delta``."""

    clip: float
    sigma: float
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"dp clip must be > 0, got {self.clip}")
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(f"dp sigma must be >= 0, got {self.sigma}")
        if not 0 < self.delta < 1:
            raise ValueError(f"dp delta must be in (0, 1), got {self.delta}")


class Channel:
    """One node's compression/privacy layer (see the module docstring).

    ``codec`` None with ``privacy`` None is a pass-through (:attr:`active` is False): model messages travel
    as they are, and a :class:`Compressed` one from a peer is refused. ``reference`` is the model every
    node starts from (``x_hat[0]`` of every sender); ``shared_reference`` says whether peers are known to
    hold it.
    """

    def __init__(
        self,
        *,
        reference: torch.Tensor,
        codec: Codec | None = None,
        privacy: Privacy | None = None,
        rng: torch.Generator | None = None,
        shared_reference: bool = True,
        limits: DecodeLimits = DEFAULT_LIMITS,
        max_replicas: int = 256,
    ) -> None:
        if reference.dim() != 1 or reference.dtype != torch.float32:
            raise TypeError("the reference is a 1-D float32 vector")
        self.codec = codec
        self.privacy = privacy
        self.dim = int(reference.numel())
        self.reference = reference.detach().clone()
        self.rng = rng if rng is not None else torch.Generator().manual_seed(0)
        self.shared_reference = shared_reference
        self.limits = limits
        self.max_replicas = max_replicas
        self.x_hat = self.reference.clone()
        self.seq = 0
        self.peer_seq: dict[str, int] = {}  # what copy of x_hat each peer holds (absent: 0 or UNKNOWN)
        self.replicas: OrderedDict[str, tuple[int, torch.Tensor]] = OrderedDict()
        self.state = CodecState(feedback=False)
        self.accountant: PrivacyAccountant | None = None
        if privacy is not None and privacy.sigma > 0:
            self.accountant = PrivacyAccountant(noise_multiplier=privacy.sigma, delta=privacy.delta)
        self.releases = 0
        # counters (a node's metrics read them)
        self.differences_sent = 0
        self.keyframes_sent = 0
        self.out_of_sync = 0

    @property
    def active(self) -> bool:
        return self.codec is not None or self.privacy is not None

    # ------------------------------------------------------------------ sending

    def outgoing(self, message: Message, peers: Sequence[str]) -> list[tuple[Message, list[str]]]:
        """What to send in place of ``message`` to ``peers``: groups of (message, its receivers).

        A model message becomes at most two: the difference, for the peers that hold the previous copy,
        and a keyframe for the others. Anything else (and everything, when inactive) goes as it is.
        """
        if not self.active or message.TYPE not in MODEL_TYPES or not peers:
            return [(message, list(peers))]
        params: torch.Tensor = message.params  # type: ignore[union-attr]
        fields = message.to_fields()
        del fields["p"]
        base = self.seq
        release = params.detach().to(torch.float32) - self.x_hat
        if self.privacy is not None:
            release = gaussian_mechanism(
                release,
                clip_norm=self.privacy.clip,
                noise_multiplier=self.privacy.sigma,
                generator=self.rng,
            )
            if self.accountant is not None:
                self.accountant.step()
            self.releases += 1
        encoded = None
        if self.codec is not None:
            encoded = self.codec.encode(release, self.state, self.rng)
            release = self._step(self.codec.decode(encoded, self.dim, self.limits))  # what receivers rebuild
        self.x_hat = self.x_hat + release
        self.seq = base + 1
        default = 0 if self.shared_reference else UNKNOWN
        synced = [p for p in peers if self.peer_seq.get(p, default) == base] if encoded is not None else []
        others = [p for p in peers if encoded is None or self.peer_seq.get(p, default) != base]
        for p in peers:
            self.peer_seq[p] = self.seq
        out: list[tuple[Message, list[str]]] = []
        if synced:
            assert encoded is not None
            out.append((Compressed(kind=message.TYPE, fields=fields, seq=self.seq, encoded=encoded), synced))
            self.differences_sent += len(synced)
        if others:
            out.append(
                (Compressed(kind=message.TYPE, fields=fields, seq=self.seq, params=self.x_hat), others)
            )
            self.keyframes_sent += len(others)
        return out

    def _step(self, decoded: torch.Tensor) -> torch.Tensor:
        """The change a decoded difference makes to ``x_hat`` (on the sender and every receiver alike).

        The whole decoded difference, except for ``seeds:K``: its estimate is unbiased but not contractive
        (``E||e - C(e)||^2 = (d - 1)/K ||e||^2``), so adding it whole makes ``x - x_hat`` grow without
        bound. Scaled by ``K / (K + d - 1)`` (the step minimising the expected error) the error shrinks
        by that factor in expectation each message: slowly, but it converges (tested)."""
        if isinstance(self.codec, SeedsCodec):
            k = self.codec.count
            return decoded * (k / (k + self.dim - 1))
        return decoded

    def lost(self, peer: str) -> None:
        """A message to ``peer`` did not arrive (or may not have): the next one to it is a keyframe."""
        self.peer_seq[peer] = UNKNOWN

    # ------------------------------------------------------------------ receiving

    def incoming(self, sender: str, message: Compressed, limits: Limits) -> Message:
        """The model message ``message`` stands for, rebuilt from ``sender``'s replica.

        Raises :class:`WireError`: ``codec-<reason>`` for a malformed encoding (a strike), ``codec-unexpected``
        when this node runs without compression, :data:`OUT_OF_SYNC` for a difference this node cannot apply
        (not a strike).
        """
        if not self.active:
            raise WireError("codec-unexpected", "a compressed message, and this node runs without --compress")
        if message.params is not None:
            vector = message.params.clone()
        else:
            assert message.encoded is not None
            if self.codec is None:
                raise WireError("codec-wrong-codec", "a difference, and this node runs without a codec")
            held = self.replicas.get(sender)
            if held is None:
                held = (0, self.reference) if self.shared_reference else (UNKNOWN, self.reference)
            if held[0] != message.seq - 1:
                self.out_of_sync += 1
                raise WireError(OUT_OF_SYNC, f"difference {message.seq} on copy {held[0]}")
            try:
                decoded = self._step(self.codec.decode(message.encoded, self.dim, self.limits))
            except CodecError as exc:
                raise WireError(f"codec-{exc.reason}", str(exc)) from None
            vector = held[1] + decoded
            if not all_finite(vector):
                raise WireError("codec-non-finite", "the replica overflows")
        # the carried fields (round, step, view) are checked by the message's own reader, on a one-value
        # stand-in vector (no copy of the model), then the rebuilt vector takes its place
        cls = MESSAGE_TYPES[message.kind]
        probe = Limits(dim=1, max_view=limits.max_view, max_round=limits.max_round)
        inner = dataclasses.replace(cls.from_fields({**message.fields, "p": _ONE}, probe), params=vector)
        self.replicas[sender] = (message.seq, vector)
        self.replicas.move_to_end(sender)
        while len(self.replicas) > self.max_replicas:
            self.replicas.popitem(last=False)
        result: ModelUpdate | TrainedModel | AggregatedModel = inner
        return result

    # ------------------------------------------------------------------ privacy and checkpoints

    def spent(self) -> PrivacySpent | None:
        """The node's privacy loss so far; None without differential privacy."""
        if self.privacy is None:
            return None
        if self.accountant is None:  # sigma 0: clipping only, no guarantee
            return PrivacySpent(epsilon=math.inf, delta=self.privacy.delta, rounds=self.releases)
        return self.accountant.spent()

    def stats(self) -> dict[str, int]:
        return {
            "differences_sent": self.differences_sent,
            "keyframes_sent": self.keyframes_sent,
            "out_of_sync": self.out_of_sync,
            "releases": self.releases,
        }

    def to_fields(self) -> dict[str, Any]:
        """The channel's state as plain msgpack fields (a checkpoint's ``extra["channel"]``)."""
        return {
            "seq": self.seq,
            "x_hat": vector_to_bytes(self.x_hat),
            "peers": dict(self.peer_seq),
            "replicas": {p: [s, vector_to_bytes(v)] for p, (s, v) in self.replicas.items()},
            "codec": self.state.to_fields(),
            "releases": self.releases,
        }

    def restore(self, fields: Any) -> None:
        """Read back :meth:`to_fields`, checked like wire input; :class:`ValueError` if it does not fit."""
        if not isinstance(fields, dict):
            raise ValueError("channel state must be a map")
        seq, raw, peers, replicas = (fields.get(k) for k in ("seq", "x_hat", "peers", "replicas"))
        releases = fields.get("releases", 0)
        if type(seq) is not int or seq < 0 or type(releases) is not int or releases < 0:
            raise ValueError("channel state: bad sequence number")
        if not isinstance(raw, bytes) or len(raw) != 4 * self.dim:
            raise ValueError("channel state: x_hat does not fit this model")
        if not isinstance(peers, dict) or not all(
            type(k) is str and type(v) is int and v >= UNKNOWN for k, v in peers.items()
        ):
            raise ValueError("channel state: bad peer map")
        if not isinstance(replicas, dict):
            raise ValueError("channel state: bad replicas")
        restored: OrderedDict[str, tuple[int, torch.Tensor]] = OrderedDict()
        for peer, entry in replicas.items():
            if not (
                type(peer) is str
                and isinstance(entry, list)
                and len(entry) == 2
                and type(entry[0]) is int
                and isinstance(entry[1], bytes)
                and len(entry[1]) == 4 * self.dim
            ):
                raise ValueError("channel state: bad replica")
            restored[peer] = (entry[0], float32_from_bytes(entry[1], self.dim))
        warm = int(getattr(self.codec, "warm_size", 0) or 0)
        try:
            state = CodecState.from_fields(fields.get("codec", {}), dim=self.dim, warm_size=warm)
        except CodecError as exc:
            raise ValueError(f"channel state: {exc}") from None
        # What each peer held is not trusted after a restart: messages may have gone out after this state
        # was saved, and a peer's copy numbered like ours would differ from it silently. Every peer gets a
        # keyframe first.
        self.seq, self.x_hat, self.replicas = seq, float32_from_bytes(raw, self.dim), restored
        self.peer_seq = {p: UNKNOWN for p in peers}
        self.shared_reference = False
        self.state = state
        self.releases = releases
        if self.privacy is not None and self.privacy.sigma > 0:
            self.accountant = PrivacyAccountant(
                noise_multiplier=self.privacy.sigma, delta=self.privacy.delta, rounds=releases
            )


# ---------------------------------------------------------------------------------- run settings


def layout_for(shapes: Any, dim: int) -> Any:
    """The :class:`Layout` of a flat model vector of ``dim`` values: the parameters' ``shapes``, then what is
    left (averaged buffers) as one 1-D block."""
    from phalanx.gossip.compression import Layout

    shapes = [tuple(s) for s in shapes]
    extra = dim - sum(math.prod(s) for s in shapes)
    return Layout.of([*shapes, (extra,)] if extra > 0 else shapes)


class ChannelSettingsError(ValueError):
    """A bad ``compress`` / ``dp_*`` setting: one line for the command line."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelSettings:
    """What a run asked for: a codec spec (``""``: none) and differential privacy (``privacy`` None: off).

    Built by :func:`channel_settings`, which checks the spec and picks sigma for a target epsilon.
    """

    compress: str = ""
    privacy: Privacy | None = None
    epsilon_target: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.compress) or self.privacy is not None

    def build(
        self,
        reference: torch.Tensor,
        *,
        rng: torch.Generator,
        layout: Any = None,
        shared_reference: bool = True,
        private: bool = True,
    ) -> Channel:
        """A node's channel; ``private`` False (a Byzantine node) leaves the noise out."""
        from phalanx.gossip.compression import codec_from_spec

        codec = codec_from_spec(self.compress, layout=layout) if self.compress else None
        return Channel(
            reference=reference,
            codec=codec,
            privacy=self.privacy if private else None,
            rng=rng,
            shared_reference=shared_reference,
        )


def channel_settings(
    *,
    compress: str = "",
    dp_clip: float = 0.0,
    dp_sigma: float = 0.0,
    dp_epsilon: float = 0.0,
    dp_delta: float = 1e-5,
    releases: int = 1,
    calibrate: bool = True,
) -> ChannelSettings:
    """Check a run's compression and privacy settings; ``releases`` is the planned number of messages a node
    sends (rounds x gossip steps), over which ``dp_epsilon`` is spent. :class:`ChannelSettingsError` (one
    line) for a bad combination. ``calibrate`` False checks the settings without computing sigma (a config's
    validation: the calibration takes a fraction of a second)."""
    from phalanx.gossip.compression import CodecSpecError, Layout, codec_from_spec

    compress = compress.strip()
    if compress:
        try:
            # lowrank needs the model's shapes, known later: check the spec's form with a stand-in layout
            codec_from_spec(compress, layout=Layout.of([(2, 2)]))
        except CodecSpecError as exc:
            raise ChannelSettingsError(f"--compress: {exc}") from None
    if dp_sigma and dp_epsilon:
        raise ChannelSettingsError("--dp-sigma and --dp-epsilon both given: give one")
    if (dp_sigma or dp_epsilon) and not dp_clip:
        raise ChannelSettingsError(
            "differential privacy needs --dp-clip C > 0 (the norm each update is clipped to)"
        )
    if not dp_clip:
        return ChannelSettings(compress=compress)
    sigma = dp_sigma
    if dp_epsilon and calibrate:
        from phalanx.gossip.privacy import PrivacyError, PrivacyUnavailable, sigma_for

        try:
            sigma = sigma_for(dp_epsilon, delta=dp_delta, rounds=max(1, releases))
        except (PrivacyError, PrivacyUnavailable) as exc:
            raise ChannelSettingsError(f"--dp-epsilon: {exc}") from None
    try:
        privacy = Privacy(clip=dp_clip, sigma=sigma, delta=dp_delta)
    except ValueError as exc:
        raise ChannelSettingsError(str(exc)) from None
    return ChannelSettings(compress=compress, privacy=privacy, epsilon_target=dp_epsilon)
