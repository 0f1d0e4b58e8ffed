"""The aggregator's ingest stage: ``POST /v1/ingest`` up to the durable commit of a batch."""

from sentinel.exports import lazy_exports

#: The public names, each imported from its module when first used.
__all__, __getattr__ = lazy_exports(__name__, {
    "ClockCheck": "aggregator.ingest.clock_check",
    "Dedup": "aggregator.ingest.dedup",
    "IngestConfig": "aggregator.ingest.config",
    "IngestJournal": "aggregator.ingest.journal",
    "IngestService": "aggregator.ingest.service",
    "IngestTokens": "aggregator.ingest.auth",
    "clamp_future": "aggregator.ingest.event_time",
})
