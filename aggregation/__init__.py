"""phalanx.aggregation."""
