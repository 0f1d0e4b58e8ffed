"""Security signals: the consumer of guardrail events (``consumer``) and the action hook it feeds (``actions``),
and where the hook keeps its actions (``action_store``; a cluster's are in
PostgreSQL, beside the alerts: :mod:`aggregator.alerting.security_actions`)."""

from sentinel.exports import lazy_exports

#: The public names, each imported from its module when first used.
__all__, __getattr__ = lazy_exports(__name__, {
    "Action": "aggregator.analysis.security.actions",
    "ActionHook": "aggregator.analysis.security.actions",
    "ActionStore": "aggregator.analysis.security.action_store",
    "MemoryActionStore": "aggregator.analysis.security.action_store",
    "SecurityConfig": "aggregator.analysis.security.consumer",
    "SecurityConsumer": "aggregator.analysis.security.consumer",
    "parse_security_settings": "aggregator.analysis.security.consumer",
})
