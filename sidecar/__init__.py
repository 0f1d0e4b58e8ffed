"""The LLM-Sentinel sidecar: OTLP receiver, extraction, local detection, forwarding, spool."""

from sentinel.exports import lazy_exports

#: The public names, each imported from its module when first used.
__all__, __getattr__ = lazy_exports(__name__, {
    "Sidecar": "sidecar.app",
    "SidecarConfig": "sidecar.config",
})
