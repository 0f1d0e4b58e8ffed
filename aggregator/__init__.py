"""The LLM-Sentinel aggregator: ingest, baselines, detectors, alerting."""

from sentinel.exports import lazy_exports

#: The public names, each imported from its module when first used.
__all__, __getattr__ = lazy_exports(__name__, {
    "Aggregator": "aggregator.app",
    "AggregatorConfig": "aggregator.config",
})
