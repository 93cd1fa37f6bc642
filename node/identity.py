"""A node's identity: an ed25519 key created on first start, kept in a 0600 file, and the peer id it gives.

The key file holds one line, ``phalanx-ed25519 <64 hex digits>``: the 32-byte private seed. The peer id is
libp2p's identity multihash of the public key, so the same file always gives the same peer id.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID

from phalanx.gossip.identity import Signer

_PREFIX = "phalanx-ed25519 "


class IdentityError(ValueError):
    """A key file that cannot be read, has the wrong form or is readable by others."""


def peer_id_of(key_pair: KeyPair) -> str:
    """The base58 peer id (``12D3KooW...``) of a key pair."""
    return ID.from_pubkey(key_pair.public_key).to_base58()


def _from_seed(seed: bytes) -> KeyPair:
    return create_new_key_pair(seed)


def load_key(path: Path) -> KeyPair:
    """Read a key file; refuses one that other users can read or that is not in our format."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            f"key file {path} is accessible by other users (mode {mode & 0o777:o}); chmod 600 it"
        )
    text = path.read_text(encoding="ascii", errors="replace").strip()
    if not text.startswith(_PREFIX):
        raise IdentityError(f"key file {path} is not a phalanx ed25519 key")
    try:
        seed = bytes.fromhex(text[len(_PREFIX) :])
    except ValueError:
        raise IdentityError(f"key file {path} holds a malformed key") from None
    if len(seed) != 32:
        raise IdentityError(f"key file {path} holds a key of {len(seed)} bytes, expected 32")
    return _from_seed(seed)


def create_key(path: Path, *, overwrite: bool = False) -> KeyPair:
    """Create a fresh key and write it to ``path`` with mode 0600. Fails if the file exists, unless
    ``overwrite``: then the new key replaces it atomically (written aside, fsynced, renamed over it)."""
    seed = os.urandom(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    target = path.with_name(f".{path.name}.{os.getpid()}.tmp") if overwrite else path
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(_PREFIX + seed.hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(target, path)
    except BaseException:
        if overwrite:
            target.unlink(missing_ok=True)
        raise
    return _from_seed(seed)


def load_or_create_key(path: Path) -> KeyPair:
    """The key at ``path``, created on first use."""
    try:
        return load_key(path)
    except FileNotFoundError:
        try:
            return create_key(path)
        except FileExistsError:  # another process created it between our two calls
            return load_key(path)


def signer_of(key_pair: KeyPair, peer_id: str) -> Signer:
    """The node's key as a :class:`~phalanx.gossip.identity.Signer` of its own membership records."""
    return Signer.from_seed(peer_id, key_pair.private_key.to_bytes()[:32])
