"""LLM-Sentinel shared package: data model, wire format, configuration, what every process shares.

It imports nothing of the components above it; the `sentinel` command (`sentinel/cli/`) is the one
part allowed to (tests/test_import_graph.py).
"""

from sentinel.exports import lazy_exports

#: The public names, each imported from its module when first used.
__all__, __getattr__ = lazy_exports(__name__, {
    "Alert": "sentinel.alerts",
    "ConfigError": "sentinel.config",
    "FeatureBatch": "sentinel.model",
    "LocalAnomaly": "sentinel.model",
    "WireBatch": "sentinel.wire",
    "WireFormatError": "sentinel.wire",
})
