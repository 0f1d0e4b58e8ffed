"""The LLM-Sentinel aggregator: ingest, baselines, detectors, alerting."""
