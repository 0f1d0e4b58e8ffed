"""The aggregator's analysis stage: what happens to a batch once it is durably accepted."""

from sentinel.exports import lazy_exports

#: The public names, each imported from its module when first used.
__all__, __getattr__ = lazy_exports(__name__, {
    "Analysis": "aggregator.analysis.pipeline",
    "Candidate": "aggregator.analysis.detectors.candidate",
    "CandidateLog": "aggregator.analysis.candidates",
    "Consumer": "aggregator.analysis.pipeline",
    "JsonStateFile": "aggregator.analysis.state",
    "LocalAnomalyConfirmer": "aggregator.analysis.confirm",
    "SeriesConsumer": "aggregator.analysis.series",
    "StateFile": "aggregator.analysis.state",
})
