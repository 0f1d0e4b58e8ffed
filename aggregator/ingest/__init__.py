"""The aggregator's ingest stage: ``POST /v1/ingest`` up to the durable commit of a batch."""
