"""The Isolation Forest (``isolation_forest``) and the analysis consumer that trains and scores it (``consumer``)."""

from sentinel.exports import lazy_exports

#: The public names, each imported from its module when first used.
__all__, __getattr__ = lazy_exports(__name__, {
    "ForestConfig": "aggregator.analysis.forest.consumer",
    "ForestConsumer": "aggregator.analysis.forest.consumer",
    "ForestFiles": "aggregator.analysis.forest.consumer",
    "IsolationForest": "aggregator.analysis.forest.isolation_forest",
    "TrainedForest": "aggregator.analysis.forest.consumer",
})
