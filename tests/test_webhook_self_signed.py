"""``--self-signed``: the generated CA and serving certificate over real HTTPS, the caBundle patch through a
real ``kubernetes`` client against an in-process fake API server, and the settings that go with it."""

from __future__ import annotations

import asyncio
import base64
import copy
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import pytest
from aiohttp import web
from cryptography import x509
from kubernetes import client as k8s
from prometheus_client import CollectorRegistry

from sentinel.config import ConfigError, load
from webhook_injector import self_signed
from webhook_injector.metrics import WebhookMetrics
from webhook_injector.server import WebhookServer
from webhook_injector.settings import InjectorSettings

NAME = "sentinel-webhook"
PATH = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{NAME}"


def webhook_configuration() -> dict[str, Any]:
    def hook(name: str) -> dict[str, Any]:
        return {"name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "failurePolicy": "Ignore", "timeoutSeconds": 5,
                "clientConfig": {"service": {"name": NAME, "namespace": "llm-sentinel", "path": "/mutate"}}}

    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": NAME, "resourceVersion": "1"},
            "webhooks": [hook("pods.sentinel.llm-devops.io"), hook("pods-ns.sentinel.llm-devops.io")]}


class FakeKubernetes:
    """GET and JSON-Patch PATCH of one MutatingWebhookConfiguration; ``fail`` answers 500 that many times."""

    def __init__(self, fail: int = 0) -> None:
        self.obj = webhook_configuration()
        self.patches: list[tuple[str, Any]] = []
        self.fail = fail
        self.port = 0

    async def _get(self, request: web.Request) -> web.Response:
        return web.json_response(self.obj)

    async def _patch(self, request: web.Request) -> web.Response:
        if self.fail:
            self.fail -= 1
            return web.json_response({"kind": "Status", "code": 500}, status=500)
        body = await request.json()
        self.patches.append((request.headers["Content-Type"], body))
        self.obj = jsonpatch.apply_patch(copy.deepcopy(self.obj), body)
        return web.json_response(self.obj)

    def api(self) -> Any:
        configuration = k8s.Configuration(host=f"http://127.0.0.1:{self.port}")
        return k8s.AdmissionregistrationV1Api(k8s.ApiClient(configuration))


@pytest.fixture
async def fake_kubernetes() -> AsyncIterator[Callable[..., Awaitable[FakeKubernetes]]]:
    runners: list[web.AppRunner] = []

    async def make(fail: int = 0) -> FakeKubernetes:
        fake = FakeKubernetes(fail)
        app = web.Application()
        app.router.add_get(PATH, fake._get)
        app.router.add_patch(PATH, fake._patch)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        fake.port = runner.addresses[0][1]
        return fake

    yield make
    for runner in runners:
        await runner.cleanup()


def test_generated_certificate_names_and_chain() -> None:
    ca_pem, cert_pem, key_pem = self_signed.generate("sentinel-webhook", "llm-sentinel", days=30)
    ca, cert = x509.load_pem_x509_certificate(ca_pem), x509.load_pem_x509_certificate(cert_pem)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)
    assert sans == ["sentinel-webhook", "sentinel-webhook.llm-sentinel", "sentinel-webhook.llm-sentinel.svc",
                    "sentinel-webhook.llm-sentinel.svc.cluster.local"]
    cert.verify_directly_issued_by(ca)
    assert cert.issuer == ca.subject
    assert b"PRIVATE KEY" in key_pem
    # Two start-ups make two unrelated CAs.
    assert self_signed.generate("sentinel-webhook", "llm-sentinel")[0] != ca_pem


async def test_self_signed_server_verifies_for_service_names(
        fake_kubernetes: Callable[..., Any]) -> None:
    fake = await fake_kubernetes()
    settings = InjectorSettings(listen="127.0.0.1:0", self_signed=True, service_namespace="llm-sentinel")
    srv = WebhookServer(settings, metrics=WebhookMetrics(CollectorRegistry()), kubernetes_api=fake.api)
    await srv.start()
    try:
        assert await srv.wait_ca_bundle() is True
        ctx = ssl.create_default_context(cadata=srv.ca_pem.decode())
        async with aiohttp.ClientSession() as session:
            for name in ("sentinel-webhook.llm-sentinel.svc", "sentinel-webhook.llm-sentinel.svc.cluster.local"):
                async with session.get(f"https://127.0.0.1:{srv.port}/healthz", ssl=ctx,
                                       server_hostname=name) as resp:
                    assert resp.status == 200
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with session.get(f"https://127.0.0.1:{srv.port}/healthz", ssl=ctx,
                                       server_hostname="other.llm-sentinel.svc"):
                    pass
        # The bundle the fake API server now holds is the CA that verified the connection.
        bundles = {w["clientConfig"]["caBundle"] for w in fake.obj["webhooks"]}
        assert bundles == {base64.b64encode(srv.ca_pem).decode()}
    finally:
        await srv.shutdown()
        await srv.shutdown()  # idempotent


async def test_patch_ca_bundle_through_the_kubernetes_client(fake_kubernetes: Callable[..., Any]) -> None:
    fake = await fake_kubernetes()
    ca_pem = self_signed.generate("sentinel-webhook", "llm-sentinel")[0]
    # Blocking client: run it in a thread, as the server does, so the fake on this loop can answer.
    assert await asyncio.to_thread(self_signed.patch_ca_bundle, fake.api(), NAME, ca_pem) == 2
    [(content_type, body)] = fake.patches
    assert content_type.startswith("application/json-patch+json")
    bundle = base64.b64encode(ca_pem).decode()
    assert body == [
        {"op": "test", "path": "/webhooks/0/name", "value": "pods.sentinel.llm-devops.io"},
        {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": bundle},
        {"op": "test", "path": "/webhooks/1/name", "value": "pods-ns.sentinel.llm-devops.io"},
        {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": bundle},
    ]
    # Everything else of the object is as it was.
    for hook in fake.obj["webhooks"]:
        assert hook["clientConfig"]["service"]["path"] == "/mutate" and hook["failurePolicy"] == "Ignore"


async def test_patch_is_retried_then_succeeds(fake_kubernetes: Callable[..., Any]) -> None:
    fake = await fake_kubernetes(fail=2)
    ok = await self_signed.patch_ca_bundle_with_retry(fake.api, NAME, b"ca", attempts=3, backoff_s=0.01)
    assert ok is True and len(fake.patches) == 1


async def test_server_keeps_serving_when_the_patch_keeps_failing(fake_kubernetes: Callable[..., Any]) -> None:
    fake = await fake_kubernetes(fail=100)
    srv = WebhookServer(InjectorSettings(listen="127.0.0.1:0", self_signed=True),
                        metrics=WebhookMetrics(CollectorRegistry()), kubernetes_api=fake.api, patch_backoff_s=0.01)
    await srv.start()
    try:
        assert await srv.wait_ca_bundle() is False and srv.ca_bundle_patched is False
        ctx = ssl.create_default_context(cadata=srv.ca_pem.decode())
        async with aiohttp.ClientSession() as session, session.get(
                f"https://127.0.0.1:{srv.port}/readyz", ssl=ctx,
                server_hostname="sentinel-webhook.llm-sentinel.svc") as resp:
            assert resp.status == 200
    finally:
        await srv.shutdown()


async def test_shutdown_cancels_a_pending_patch_and_removes_the_key() -> None:
    def no_cluster() -> Any:
        raise RuntimeError("not in a cluster")

    srv = WebhookServer(InjectorSettings(listen="127.0.0.1:0", self_signed=True),
                        metrics=WebhookMetrics(CollectorRegistry()), kubernetes_api=no_cluster, patch_backoff_s=60)
    await srv.start()
    assert srv.certificates is not None
    key = Path(srv.certificates.key)
    assert key.stat().st_mode & 0o077 == 0
    await srv.shutdown()
    assert not key.exists()


def test_self_signed_settings() -> None:
    s = load(InjectorSettings, args={"self_signed": "true"}, env={})
    assert (s.self_signed, s.webhook_config_name, s.service_name, s.service_namespace) == (
        True, "sentinel-webhook", "sentinel-webhook", "")


@pytest.mark.parametrize(("values", "key"), [
    ({"self_signed": "true", "tls_cert": "/c.pem", "tls_key": "/k.pem"}, "self_signed"),
    ({"self_signed": "true", "webhook_config_name": ""}, "webhook_config_name"),
    ({"self_signed": "true", "service_name": ""}, "service_name"),
    ({"self_signed": "maybe"}, "self_signed"),
])
def test_invalid_self_signed_settings(values: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}"):
        load(InjectorSettings, args=values, env={})


def test_namespace_from_the_downward_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    assert InjectorSettings().namespace() == "llm-sentinel"
    monkeypatch.setenv("POD_NAMESPACE", "observability")
    assert InjectorSettings().namespace() == "observability"
    assert InjectorSettings(service_namespace="explicit").namespace() == "explicit"
