"""The webhook over real HTTPS: one raw AdmissionReview, fail open, certificate reload, the CLI."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import jsonpatch
import kubernetes_validate
import pytest
import trustme
from prometheus_client import CollectorRegistry

from sentinel.cli import main
from webhook_injector.admission import review
from webhook_injector.metrics import WebhookMetrics
from webhook_injector.mutate import ANNOTATION_INJECT, NAMESPACE_LABEL, mutate
from webhook_injector.server import CertificateReloader, WebhookServer
from webhook_injector.settings import InjectorSettings

#: The Kubernetes OpenAPI schema the injected pod must satisfy (native sidecars are GA from 1.33).
KUBERNETES_VERSION = "1.33"

POD: dict[str, Any] = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"generateName": "llm-app-7d9f-", "namespace": "team-a",
                 "annotations": {ANNOTATION_INJECT: "true"}, "labels": {"app": "llm-app"}},
    "spec": {"containers": [{"name": "app", "image": "registry/llm-app:1.4", "env": [
        {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://otel-collector.obs:4317"}]}]},
}


def admission_review(pod: Any, uid: str = "5f0c7a3e-1111-4c1d-9b7a-2f3e4d5c6b7a") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team-a", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod, "oldObject": None, "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def write_cert(ca: trustme.CA, directory: Path) -> tuple[str, str]:
    cert = ca.issue_cert("sentinel-webhook.sentinel.svc", "127.0.0.1")
    cert_file, key_file = directory / "tls.crt", directory / "tls.key"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return str(cert_file), str(key_file)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[WebhookServer, ssl.SSLContext]]:
    ca = trustme.CA()
    cert, key = write_cert(ca, tmp_path)
    settings = InjectorSettings(listen="127.0.0.1:0", tls_cert=cert, tls_key=key, image="sentinel:test",
                                aggregator_url="https://central:9090")
    srv = WebhookServer(settings, metrics=WebhookMetrics(CollectorRegistry()))
    await srv.start()
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    yield srv, client_ctx
    await srv.shutdown()
    await srv.shutdown()  # idempotent


async def test_admission_review_over_https(server: tuple[WebhookServer, ssl.SSLContext]) -> None:
    srv, ctx = server
    body = admission_review(POD)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"https://127.0.0.1:{srv.port}/mutate", json=body, ssl=ctx) as resp:
            assert resp.status == 200
            answer = await resp.json()
        async with session.get(f"https://127.0.0.1:{srv.port}/readyz", ssl=ctx) as resp:
            assert resp.status == 200
        async with session.get(f"https://127.0.0.1:{srv.port}/metrics", ssl=ctx) as resp:
            metrics_text = await resp.text()
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == body["request"]["uid"]
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"]))
    patched = jsonpatch.apply_patch(POD, patch)
    assert patched == mutate(POD, {}, srv.settings)
    assert patched["spec"]["containers"][1]["name"] == "sentinel-sidecar"
    kubernetes_validate.validate(patched, KUBERNETES_VERSION, strict=True)
    assert 'sentinel_webhook_requests_total{outcome="injected"} 1.0' in metrics_text
    assert "sentinel_webhook_injected_total 1.0" in metrics_text


async def test_malformed_review_fails_open(server: tuple[WebhookServer, ssl.SSLContext]) -> None:
    srv, ctx = server
    async with aiohttp.ClientSession() as session:
        for data in (b"not json", json.dumps({"request": {"uid": "u1", "object": "a string"}}).encode()):
            async with session.post(f"https://127.0.0.1:{srv.port}/mutate", data=data, ssl=ctx,
                                    headers={"Content-Type": "application/json"}) as resp:
                assert resp.status == 200
                response = (await resp.json())["response"]
                assert response["allowed"] is True
                assert "patch" not in response and "patchType" not in response
    assert response["uid"] == "u1"
    registry = srv.metrics.registry
    assert registry.get_sample_value("sentinel_webhook_errors_total") == 2
    assert registry.get_sample_value("sentinel_webhook_requests_total", {"outcome": "error"}) == 2


@pytest.mark.parametrize(("pod", "labels", "reason"), [
    ({**POD, "metadata": {"namespace": "team-a"}}, {}, "not_requested"),
    ({**POD, "metadata": {"annotations": {ANNOTATION_INJECT: "false"}}}, {NAMESPACE_LABEL: "enabled"},
     "pod_opt_out"),
    ({**POD, "spec": {**POD["spec"], "hostNetwork": True}}, {}, "host_network"),
])
def test_skips_are_counted_without_patch(pod: dict[str, Any], labels: dict[str, str], reason: str) -> None:
    metrics = WebhookMetrics(CollectorRegistry())
    response = review(admission_review(pod), lambda ns: labels, InjectorSettings(), metrics)["response"]
    assert response["allowed"] is True and "patch" not in response
    assert metrics.registry.get_sample_value("sentinel_webhook_skipped_total", {"reason": reason}) == 1


def test_namespace_lookup_is_used_and_warnings_returned() -> None:
    pod = {"metadata": {"annotations": {"sentinel.llm-devops.io/mode": "edge"}}, "spec": {"containers": [
        {"name": "app", "image": "a"}]}}
    seen: list[str] = []

    def lookup(ns: str) -> dict[str, str]:
        seen.append(ns)
        return {NAMESPACE_LABEL: "enabled"}

    response = review(admission_review(pod), lookup, InjectorSettings(), None)["response"]
    assert seen == ["team-a"]
    assert response["patchType"] == "JSONPatch"
    assert response["warnings"][0].startswith("sentinel.llm-devops.io/mode")


def test_certificate_reload(tmp_path: Path) -> None:
    cert, key = write_cert(trustme.CA(), tmp_path)
    reloader = CertificateReloader(cert, key)
    assert reloader.maybe_reload() is False
    write_cert(trustme.CA(), tmp_path)  # cert-manager renews the files in place
    os.utime(cert, ns=(1, 1))
    assert reloader.maybe_reload() is True and reloader.reloads == 1
    Path(key).write_text("half-written")
    os.utime(key, ns=(2, 2))
    assert reloader.maybe_reload() is False  # a broken pair keeps the old certificate
    assert reloader.reloads == 1


def test_cli_refuses_invalid_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["webhook", "--listen", "8443"]) == 2
    assert "invalid setting listen" in capsys.readouterr().err


async def test_renewed_certificate_is_served(tmp_path: Path) -> None:
    old_ca, new_ca = trustme.CA(), trustme.CA()
    cert, key = write_cert(old_ca, tmp_path)
    srv = WebhookServer(InjectorSettings(listen="127.0.0.1:0", tls_cert=cert, tls_key=key, tls_reload_s=0.05),
                        metrics=WebhookMetrics(CollectorRegistry()))
    await srv.start()
    try:
        write_cert(new_ca, tmp_path)
        os.utime(cert, ns=(1, 1))
        new_ctx = ssl.create_default_context()
        new_ca.configure_trust(new_ctx)
        assert srv.certificates is not None
        for _ in range(100):
            if srv.certificates.reloads:
                break
            await asyncio.sleep(0.02)
        async with aiohttp.ClientSession() as session, session.get(
                f"https://127.0.0.1:{srv.port}/healthz", ssl=new_ctx) as resp:
            assert resp.status == 200
    finally:
        await srv.shutdown()


async def test_namespace_enabled_path_injects_unannotated_pods(tmp_path: Path) -> None:
    from webhook_injector.server import ENABLED_NAMESPACE_PATH, WebhookServer
    from webhook_injector.settings import InjectorSettings

    server = WebhookServer(InjectorSettings(listen="127.0.0.1:0"))
    await server.start()
    try:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "team-a"},
               "spec": {"containers": [{"name": "app", "image": "app:1"}]}}
        review_body = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                       "request": {"uid": "u1", "namespace": "team-a", "object": pod}}
        async with httpx.AsyncClient() as c:
            plain = (await c.post(f"http://127.0.0.1:{server.port}/mutate", json=review_body)).json()
            enabled = (await c.post(f"http://127.0.0.1:{server.port}{ENABLED_NAMESPACE_PATH}",
                                    json=review_body)).json()
        assert "patch" not in plain["response"]  # not annotated, namespace not opted in
        assert enabled["response"]["allowed"] and enabled["response"]["patchType"] == "JSONPatch"
    finally:
        await server.shutdown()
