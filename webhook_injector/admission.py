"""The thin AdmissionReview v1 shell: decode the pod, mutate it, answer with a diffed JSONPatch."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import jsonpatch

from webhook_injector.metrics import WebhookMetrics
from webhook_injector.mutate import REINVOKED, annotation_warnings, mutate, should_inject
from webhook_injector.settings import InjectorSettings

__all__ = ["NamespaceLabels", "no_namespace_labels", "review"]

log = logging.getLogger(__name__)

#: Namespace name -> its labels. An AdmissionReview does not carry them: the
#: MutatingWebhookConfiguration's ``namespaceSelector`` does the namespace-level selection (only pods
#: of namespaces labelled ``sentinel.llm-devops.io/inject=enabled``, or annotated pods, reach us).
NamespaceLabels = Callable[[str], Mapping[str, str]]


def no_namespace_labels(namespace: str) -> Mapping[str, str]:
    """The default lookup: every namespace counts as unlabelled."""
    return {}


def _response(uid: str, **fields: Any) -> dict[str, Any]:
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": {"uid": uid, "allowed": True, **fields}}


def review(admission_review: Any, namespace_labels: NamespaceLabels | None, settings: InjectorSettings,
           metrics: WebhookMetrics | None = None) -> dict[str, Any]:
    """The AdmissionReview v1 response to ``admission_review`` (the decoded JSON body): always
    ``allowed``, with a JSONPatch when the pod gets the sidecar; ``namespace_labels`` ``None``
    treats every namespace as unlabelled."""
    uid = ""
    lookup = namespace_labels or no_namespace_labels
    try:
        request = admission_review["request"]
        uid = str(request["uid"])
        pod = request["object"]
        if not isinstance(pod, dict):
            raise TypeError("request.object is not an object")
        namespace = str(request.get("namespace") or (pod.get("metadata") or {}).get("namespace") or "")
        labels = lookup(namespace) if namespace else {}
        decision, reason = should_inject(pod, labels, settings)
        warnings = annotation_warnings(pod, settings)
        extra: dict[str, Any] = {"warnings": warnings} if warnings else {}
        if reason == REINVOKED:
            # reinvocationPolicy: IfNeeded — another admission plugin changed our pod after us; the
            # pod was counted as injected the first time, and injecting is idempotent.
            if metrics is not None:
                metrics.requests.labels(REINVOKED).inc()
            return _response(uid)
        if not decision:
            log.debug("pod %s/%s not injected: %s", namespace, _name(pod), reason)
            if metrics is not None:
                metrics.requests.labels("skipped").inc()
                metrics.skipped.labels(reason).inc()
            return _response(uid, **extra)
        patch = jsonpatch.make_patch(pod, mutate(pod, labels, settings))
        if metrics is not None:
            metrics.requests.labels("injected").inc()
            metrics.injected.inc()
        log.info("pod %s/%s: sidecar injected (%s)", namespace, _name(pod), reason)
        return _response(uid, patchType="JSONPatch",
                         patch=base64.b64encode(json.dumps(patch.patch).encode()).decode(), **extra)
    except Exception:
        # Fail open: the MutatingWebhookConfiguration says failurePolicy: Ignore, and we answer the
        # same way on our own errors. A monitoring sidecar must never stop a team's pods from being
        # created; a pod without it is only unobserved, which the counter below makes visible.
        log.exception("admission review %r failed; allowing the pod unchanged", uid)
        if metrics is not None:
            metrics.requests.labels("error").inc()
            metrics.errors.inc()
        return _response(uid)


def _name(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    # Pods of a Deployment have only generateName at admission time.
    return str(meta.get("name") or meta.get("generateName") or "?")
