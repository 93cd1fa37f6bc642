"""phalanx.node."""
