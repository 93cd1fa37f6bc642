"""Tuning of py-libp2p that phalanx applies to every host it starts, with the measurement behind it.

py-libp2p's yamux writes a stream's data in DATA frames of at most 64 KiB (its ``MAX_MESSAGE_SIZE``, go-yamux's
default). A 4 MB model is then some 64 frames per peer, each taking a write lock, a Noise message of 65,519 bytes
*and* a second one of 29 (the 12-byte yamux header pushes the frame past Noise's plaintext limit), a wake-up of the
receiver's muxer loop and a trip through trio's scheduler: per-frame Python work, not encryption, is where the time
went (``scripts/bench_exchange.py --profile``). The frame size is the *sender's* choice in yamux: a receiver accepts
any DATA frame that fits its receive window (py-libp2p checks ``length <= MAX_WINDOW_SIZE``, go-yamux and
rust-yamux check the window), and a sender never writes past the window it was granted, so larger frames stay
within the protocol and interoperate with every implementation. Measured with ``scripts/bench_exchange.py``
(4 processes, full exchange and average of 1,000,000 float32 on 127.0.0.1, same run): 64 KiB frames 0.218 s per
round, 1 MiB 0.128 s, 4 MiB 0.126 s, 16 MiB 0.129 s. 1 MiB keeps other streams' waits behind one frame short
(MoDeST's pings share the connection) at no measurable cost.
"""

from __future__ import annotations

import logging

#: The yamux DATA frame payload this node writes (bytes); py-libp2p 0.8.1's own default is 64 KiB.
YAMUX_SEND_FRAME = 1 << 20

log = logging.getLogger(__name__)


def tune_yamux(frame: int = YAMUX_SEND_FRAME) -> bool:
    """Raise py-libp2p's yamux send frame size to ``frame`` bytes; False when this py-libp2p has no such knob."""
    try:
        from libp2p.stream_muxer.yamux import yamux
    except ImportError:  # pragma: no cover - py-libp2p always ships yamux
        return False
    if not isinstance(getattr(yamux, "MAX_MESSAGE_SIZE", None), int):
        log.warning("py-libp2p's yamux has no MAX_MESSAGE_SIZE: the send frame size is left as it is")
        return False
    yamux.MAX_MESSAGE_SIZE = frame
    return True
