"""phalanx.gossip."""
