"""Global baselines: per-key sketches (``store``) and the analysis consumer that feeds them (``consumer``)."""

from sentinel.exports import lazy_exports

#: The public names, each imported from its module when first used.
__all__, __getattr__ = lazy_exports(__name__, {
    "BaselineConfig": "aggregator.analysis.baselines.store",
    "BaselineConsumer": "aggregator.analysis.baselines.consumer",
    "BaselineKey": "aggregator.analysis.baselines.store",
    "BaselineStore": "aggregator.analysis.baselines.store",
})
