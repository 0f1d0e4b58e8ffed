"""The sidecar's streaming local detectors: each call scored against its own recent traffic."""
