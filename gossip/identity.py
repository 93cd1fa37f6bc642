"""Who vouches for a membership record: ed25519 keys behind peer ids, signatures, a verification cache.

A membership record says "peer P is at membership counter C (odd: joined, even: left) and was active in
round R". Only P may say it: the record carries P's ed25519 signature over (P, C, R), so no other peer can
evict, hide or resurrect P, or make it look active. A relay forwards P's signed record unchanged.

Where a peer's public key comes from (a :class:`KeyDirectory`):

- on a real network the peer id *is* the key: a libp2p ed25519 peer id is the identity multihash of the
  protobuf-encoded public key (:class:`PeerIdKeys` decodes it, with no libp2p import here);
- in the simulator, whose peers are named "0", "1", ..., a table made from the run's seed
  (:func:`sim_keyring`), standing in for the same property.

Verifying costs about as much as training a few samples, so :class:`Verifier` checks each distinct signed
record once and remembers the answer (a bounded cache); the simulator shares one verifier among all its
nodes, since the answer is a pure function of the record's bytes.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from phalanx.gossip.events import PeerId

DOMAIN = b"phalanx/member-record/v1\x00"
SIGNATURE_BYTES = 64
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}
# identity multihash (0x00, length 36) of the protobuf PublicKey {Type: Ed25519 (1), Data: 32 bytes}
_ED25519_PEER_PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])


def record_bytes(peer: PeerId, counter: int, round_: int) -> bytes:
    """The bytes a membership record's signature covers."""
    return DOMAIN + struct.pack(">QQ", counter, round_) + peer.encode()


def b58decode(text: str) -> bytes | None:
    """Base58 (bitcoin alphabet) to bytes; None for a character outside the alphabet."""
    n = 0
    for ch in text:
        digit = _B58_INDEX.get(ch)
        if digit is None:
            return None
        n = n * 58 + digit
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\x00" * (len(text) - len(text.lstrip("1"))) + body


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58[r])
    return "1" * (len(data) - len(data.lstrip(b"\x00"))) + "".join(reversed(out))


def peer_id_for(public_key: bytes) -> PeerId:
    """The libp2p peer id of a raw 32-byte ed25519 public key."""
    return b58encode(_ED25519_PEER_PREFIX + public_key)


class KeyDirectory(Protocol):
    def public_key(self, peer: PeerId) -> bytes | None:
        """The raw 32-byte ed25519 public key of ``peer``, or None when it has none (not a valid id)."""
        ...


class PeerIdKeys:
    """Keys read from libp2p ed25519 peer ids themselves (a real network)."""

    def public_key(self, peer: PeerId) -> bytes | None:
        if not 40 <= len(peer) <= 64:
            return None
        raw = b58decode(peer)
        if raw is None or len(raw) != 38 or not raw.startswith(_ED25519_PEER_PREFIX):
            return None
        return raw[len(_ED25519_PEER_PREFIX) :]


class TableKeys:
    """Keys from a table (the simulator's keyring)."""

    def __init__(self, table: Mapping[PeerId, bytes]) -> None:
        self.table = dict(table)

    def public_key(self, peer: PeerId) -> bytes | None:
        return self.table.get(peer)


class Signer:
    """One peer's private key: it signs that peer's own membership records and nothing else."""

    def __init__(self, peer: PeerId, key: Ed25519PrivateKey) -> None:
        self.peer = peer
        self._key = key

    @classmethod
    def from_seed(cls, peer: PeerId, seed: bytes) -> Signer:
        return cls(peer, Ed25519PrivateKey.from_private_bytes(seed))

    def public_key(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def sign(self, counter: int, round_: int) -> bytes:
        return self._key.sign(record_bytes(self.peer, counter, round_))


class Verifier:
    """Checks signed records against a :class:`KeyDirectory`, each distinct record once (bounded cache)."""

    def __init__(self, keys: KeyDirectory, *, cache: int = 65536) -> None:
        self.keys = keys
        self.cache_size = cache
        self._cache: dict[tuple[PeerId, int, int, bytes], bool] = {}  # insertion order: oldest first
        self._public: dict[PeerId, Ed25519PublicKey | None] = {}
        self.checked = 0  # signatures actually verified (cache misses)
        self.hits = 0

    def _key(self, peer: PeerId) -> Ed25519PublicKey | None:
        if peer not in self._public:
            raw = self.keys.public_key(peer)
            key = None
            if raw is not None and len(raw) == 32:
                try:
                    key = Ed25519PublicKey.from_public_bytes(raw)
                except ValueError:
                    key = None
            if len(self._public) > self.cache_size:
                self._public.clear()
            self._public[peer] = key
        return self._public[peer]

    def verify(self, peer: PeerId, counter: int, round_: int, signature: bytes) -> bool:
        """Whether ``signature`` is ``peer``'s over (peer, counter, round)."""
        if len(signature) != SIGNATURE_BYTES:
            return False
        key = (peer, counter, round_, signature)
        known = self._cache.get(key)
        if known is not None:
            self.hits += 1
            return known
        public = self._key(peer)
        ok = False
        if public is not None:
            self.checked += 1
            try:
                public.verify(signature, record_bytes(peer, counter, round_))
                ok = True
            except InvalidSignature:
                ok = False
        self._cache[key] = ok
        if len(self._cache) > self.cache_size:
            del self._cache[next(iter(self._cache))]  # the oldest entry
        return ok


def sim_keyring(peers: Iterable[PeerId], seed: int) -> tuple[dict[PeerId, Signer], Verifier]:
    """A signer per simulated peer (keys derived from the run's seed) and one verifier that knows them all."""
    signers = {}
    for peer in peers:
        digest = hashlib.sha256(f"phalanx-sim-key:{seed}:{peer}".encode()).digest()
        signers[peer] = Signer.from_seed(peer, digest)
    return signers, Verifier(TableKeys({p: s.public_key() for p, s in signers.items()}))
