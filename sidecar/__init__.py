"""The LLM-Sentinel sidecar: OTLP receiver, extraction, local detection, forwarding, spool."""
