"""phalanx: a peer-to-peer decentralized learning node."""

__version__ = "0.1.0"
