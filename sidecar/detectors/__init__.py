"""The sidecar's streaming local detectors: each call scored against its own recent traffic."""

from sentinel.exports import lazy_exports

#: The public names, each imported from its module when first used.
__all__, __getattr__ = lazy_exports(__name__, {
    "LocalDetectionConfig": "sidecar.detectors.local_config",
    "LocalDetector": "sidecar.detectors.local",
})
