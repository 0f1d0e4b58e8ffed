"""The webhook against what a real kube-apiserver showed (issue 15, cases 18-22): reinvocations are
not skips, no annotation can make a pod invalid, port collisions and hostPath spools are said, the
sidecar gets no service-account token, and the shipped Deployment injects native sidecars."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import jsonpatch
import yaml
from prometheus_client import CollectorRegistry

from webhook_injector.admission import review
from webhook_injector.metrics import WebhookMetrics
from webhook_injector.mutate import (
    ANNOTATION_CPU_REQUEST,
    ANNOTATION_INJECT,
    ANNOTATION_MEMORY_LIMIT,
    ANNOTATION_MODE,
    ANNOTATION_SPOOL_HOST_PATH,
    SIDECAR_NAME,
    annotation_warnings,
    mutate,
    should_inject,
)
from webhook_injector.settings import InjectorSettings, quantity

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = InjectorSettings(aggregator_url="http://aggregator:9090")


def _pod(annotations: dict[str, str] | None = None, ports: list[int] | None = None) -> dict[str, Any]:
    app: dict[str, Any] = {"name": "app", "image": "app:1"}
    if ports:
        app["ports"] = [{"containerPort": p} for p in ports]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "team", "annotations": {ANNOTATION_INJECT: "true",
                                                                             **(annotations or {})}},
            "spec": {"containers": [app]}}


def _review(pod: dict[str, Any], metrics: WebhookMetrics) -> dict[str, Any]:
    out = review({"request": {"uid": "u", "namespace": "team", "object": pod}}, None, SETTINGS, metrics)
    response: dict[str, Any] = out["response"]
    return response


def _sidecar(pod: dict[str, Any]) -> dict[str, Any]:
    spec = pod["spec"]
    return next(c for kind in ("containers", "initContainers") for c in spec.get(kind, []) if c["name"] == SIDECAR_NAME)


def test_a_reinvocation_is_counted_apart_from_skips() -> None:
    """18: with reinvocationPolicy IfNeeded 22 injected pods were counted as 23 'skipped'."""
    metrics = WebhookMetrics(CollectorRegistry())
    first = _review(_pod(), metrics)
    injected = jsonpatch.apply_patch(_pod(), json.loads(base64.b64decode(first["patch"])))
    injected["spec"]["volumes"].append({"name": "kube-api-access", "projected": {"sources": []}})  # another plugin
    again = _review(injected, metrics)
    assert "patch" not in again and again["allowed"]
    sample = metrics.registry.get_sample_value
    assert sample("sentinel_webhook_requests_total", {"outcome": "injected"}) == 1
    assert sample("sentinel_webhook_requests_total", {"outcome": "reinvoked"}) == 1
    assert sample("sentinel_webhook_requests_total", {"outcome": "skipped"}) == 0
    assert sample("sentinel_webhook_skipped_total", {"reason": "already_injected"}) == 0


def test_no_resource_annotation_can_make_the_pod_invalid() -> None:
    """19: cpu-request 500m gave 'requests must be less than or equal to cpu limit of 200m'."""
    for asked, resource, both in (({ANNOTATION_CPU_REQUEST: "500m"}, "cpu", "500m"),
                                  ({ANNOTATION_MEMORY_LIMIT: "64Mi"}, "memory", "64Mi")):
        pod = _pod(asked)
        resources = _sidecar(mutate(pod, {}, SETTINGS))["resources"]
        assert resources["requests"][resource] == resources["limits"][resource] == both
        for r in ("cpu", "memory"):
            assert quantity(resources["requests"][r]) <= quantity(resources["limits"][r])
        assert any(f"sidecar {resource} request" in w for w in annotation_warnings(pod, SETTINGS))


def test_a_port_collision_skips_with_a_warning() -> None:
    """20: an app already listening on 8081 (or 4317/4318) was injected anyway."""
    for port in (4317, 4318, 8081):
        pod = _pod(ports=[port])
        assert should_inject(pod, {}, SETTINGS) == (False, "port_conflict")
        assert any(f"port {port}" in w for w in annotation_warnings(pod, SETTINGS))
    assert should_inject(_pod(ports=[8080]), {}, SETTINGS)[0]


def test_the_sidecar_gets_no_service_account_token() -> None:
    """21: the sidecar had the pod's token mounted; it calls no Kubernetes API."""
    out = mutate(_pod(), {}, SETTINGS)
    mounts = {m["mountPath"]: m for m in _sidecar(out)["volumeMounts"]}
    shadow = mounts["/var/run/secrets/kubernetes.io/serviceaccount"]
    assert shadow["readOnly"] is True
    volume = next(v for v in out["spec"]["volumes"] if v["name"] == shadow["name"])
    assert "emptyDir" in volume
    assert "volumeMounts" not in out["spec"]["containers"][0], "the app's containers are left as they were"


def test_a_host_path_spool_is_warned_about_and_native_sidecars_ship_on() -> None:
    """22: spool-host-path is forbidden under PodSecurity baseline/restricted; the Deployment left
    native_sidecar off."""
    pod = _pod({ANNOTATION_MODE: "store-and-forward", ANNOTATION_SPOOL_HOST_PATH: "/var/lib/spool"})
    assert any("PodSecurity baseline and restricted" in w for w in annotation_warnings(pod, SETTINGS))
    docs = list(yaml.safe_load_all((ROOT / "deploy/k8s/webhook-deployment.yaml").read_text()))
    env = {e["name"]: e.get("value") for d in docs if d and d.get("kind") == "Deployment"
           for c in d["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])}
    assert env["SENTINEL_NATIVE_SIDECAR"] == "true"
