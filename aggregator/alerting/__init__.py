"""Alerting: candidates become alerts (manager), are stored (store), streamed (hub) and sent (sinks).

See aggregator/alerting/README.md.
"""
