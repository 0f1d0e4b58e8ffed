"""Fault suite (issue 8): real sidecar and aggregator processes, real RabbitMQ, injected faults."""
