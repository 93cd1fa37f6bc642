"""The 1 MiB yamux send frames (node/libp2p_tuning.py) interoperate with an untuned py-libp2p receiver.

The receiver runs in its own process with py-libp2p exactly as shipped (64 KiB frames): it must read a 4 MB
model that phalanx's transport writes in 1 MiB frames, byte for byte.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap

import pytest
import torch
import trio

from phalanx.gossip.messages import ModelUpdate, encode
from phalanx.gossip.wire import FRAME_HEADER, Limits
from phalanx.node.libp2p_tuning import YAMUX_SEND_FRAME, tune_yamux
from phalanx.node.transport import PROTOCOL_ID, open_libp2p_transport

RECEIVER = textwrap.dedent(
    """
    import hashlib, struct, sys
    import multiaddr, trio
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.custom_types import TProtocol
    from libp2p.network.stream.exceptions import StreamEOF
    from libp2p.stream_muxer.yamux import yamux

    assert yamux.MAX_MESSAGE_SIZE == 64 * 1024, "the receiver must be untuned"

    async def main():
        done = trio.Event()
        got = bytearray()

        async def handler(stream):
            while True:
                try:
                    chunk = await stream.read(1 << 20)
                except StreamEOF:
                    break
                if not chunk:
                    break
                got.extend(chunk)
            done.set()

        host = new_host(key_pair=create_new_key_pair())
        host.set_stream_handler(TProtocol(sys.argv[1]), handler)
        async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            print(f"{host.get_addrs()[0]}", flush=True)
            with trio.fail_after(60):
                await done.wait()
        print(len(got), hashlib.sha256(bytes(got)).hexdigest(), flush=True)

    trio.run(main)
    """
)


def test_tune_yamux_sets_the_send_frame() -> None:
    from libp2p.stream_muxer.yamux import yamux

    assert tune_yamux()
    assert yamux.MAX_MESSAGE_SIZE == YAMUX_SEND_FRAME


@pytest.mark.network
async def test_untuned_receiver_reads_a_model_sent_in_1_mib_frames() -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair

    body = encode(
        ModelUpdate(round=1, params=torch.randn(1_000_000, generator=torch.Generator().manual_seed(3)))
    )
    sent = FRAME_HEADER.pack(len(body)) + body
    proc = subprocess.Popen([sys.executable, "-c", RECEIVER, PROTOCOL_ID], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        address = await trio.to_thread.run_sync(proc.stdout.readline)
        async with open_libp2p_transport(create_new_key_pair(), limits=Limits(dim=1_000_000)) as a:
            from libp2p.stream_muxer.yamux import yamux

            assert yamux.MAX_MESSAGE_SIZE == YAMUX_SEND_FRAME  # the sender is tuned
            peer = a.add_address(address.strip())
            await a.send_raw(peer, sent)
            summary = await trio.to_thread.run_sync(proc.stdout.readline)
        assert summary.split() == [str(len(sent)), hashlib.sha256(sent).hexdigest()]
        assert await trio.to_thread.run_sync(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
