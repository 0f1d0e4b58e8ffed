"""Load generation for LLM-Sentinel: realistic GenAI telemetry, scenarios and benchmarks."""
