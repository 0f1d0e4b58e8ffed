"""Answer quality: recent calls by span and trace id (``call_index``), the consumer joining scores to them."""

from sentinel.exports import lazy_exports

#: The public names, each imported from its module when first used.
__all__, __getattr__ = lazy_exports(__name__, {
    "CallIndex": "aggregator.analysis.quality.call_index",
    "ModelVersions": "aggregator.analysis.quality.call_index",
    "QualityConfig": "aggregator.analysis.quality.consumer",
    "QualityConsumer": "aggregator.analysis.quality.consumer",
    "parse_quality_settings": "aggregator.analysis.quality.consumer",
})
