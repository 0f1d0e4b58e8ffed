"""Alerting: candidates become alerts (manager), are stored (store), streamed (hub) and sent (sinks).

See aggregator/alerting/README.md.
"""

from sentinel.exports import lazy_exports

#: The public names, each imported from its module when first used.
__all__, __getattr__ = lazy_exports(__name__, {
    "AlertHub": "aggregator.alerting.hub",
    "AlertManager": "aggregator.alerting.manager",
    "AlertManagerConfig": "aggregator.alerting.manager",
    "AlertStore": "aggregator.alerting.store",
    "AmqpSink": "aggregator.alerting.amqp_sink",
    "SQLiteAlertStore": "aggregator.alerting.store",
    "Sink": "aggregator.alerting.sink",
    "WebhookSink": "aggregator.alerting.webhook_sink",
})
