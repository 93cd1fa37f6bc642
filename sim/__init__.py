"""phalanx.sim."""
