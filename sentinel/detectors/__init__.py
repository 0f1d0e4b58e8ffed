"""Streaming detectors shared by the sidecar and the aggregator."""
