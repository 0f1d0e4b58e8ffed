"""The mutating admission webhook that injects the LLM-Sentinel sidecar into pods.

``sentinel webhook --listen 0.0.0.0:8443 --tls-cert FILE --tls-key FILE`` serves AdmissionReview v1
at ``POST /mutate``; see ``webhook_injector/README.md``.
"""

from webhook_injector.admission import review
from webhook_injector.metrics import WebhookMetrics
from webhook_injector.mutate import annotation_warnings, inject, mutate, should_inject
from webhook_injector.server import WebhookServer
from webhook_injector.settings import InjectorSettings

__all__ = [
    "InjectorSettings",
    "WebhookMetrics",
    "WebhookServer",
    "annotation_warnings",
    "inject",
    "mutate",
    "review",
    "should_inject",
]
