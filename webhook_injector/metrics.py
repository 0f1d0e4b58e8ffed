"""The webhook's self-metrics (Prometheus), registered on an injected registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from webhook_injector.mutate import SKIP_REASONS

__all__ = ["OUTCOMES", "WebhookMetrics"]

#: Values of the ``outcome`` label of ``sentinel_webhook_requests_total``.
OUTCOMES = ("injected", "skipped", "reinvoked", "error")


class WebhookMetrics:
    """Every metric the webhook exports; names are part of its public interface."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "sentinel_webhook_requests", "AdmissionReview requests by outcome", ["outcome"], registry=r)
        for outcome in OUTCOMES:
            self.requests.labels(outcome)
        self.skipped = Counter(
            "sentinel_webhook_skipped", "Pods left without a sidecar, by reason", ["reason"], registry=r)
        for reason in SKIP_REASONS:  # a reinvocation (our own pod again) is not a skip
            self.skipped.labels(reason)
        self.injected = Counter("sentinel_webhook_injected", "Pods given the sidecar", registry=r)
        self.errors = Counter(
            "sentinel_webhook_errors", "Requests that failed internally and were allowed unchanged (fail open)",
            registry=r)
