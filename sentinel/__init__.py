"""LLM-Sentinel shared package: data model, wire format, detectors, configuration, CLI."""
