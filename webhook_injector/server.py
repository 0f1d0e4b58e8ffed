"""The HTTPS shell: ``POST /mutate`` plus ``/metrics``, ``/healthz`` and ``/readyz``, with the serving
certificate reloaded from its files when they change (cert-manager renews them in place), or, with
``self_signed``, made at start-up (:mod:`webhook_injector.self_signed`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from sentinel import service
from sentinel.service import add_ops_routes
from sentinel.tasks import TaskSupervisor
from webhook_injector import self_signed
from webhook_injector.admission import NamespaceLabels, review
from webhook_injector.metrics import WebhookMetrics
from webhook_injector.mutate import NAMESPACE_ENABLED, NAMESPACE_LABEL
from webhook_injector.settings import InjectorSettings

__all__ = ["ENABLED_NAMESPACE_PATH", "CertificateReloader", "WebhookServer"]

#: Where the MutatingWebhookConfiguration sends pods of namespaces labelled for injection.
ENABLED_NAMESPACE_PATH = "/mutate/namespace-enabled"

log = logging.getLogger(__name__)

#: An AdmissionReview carries the pod (and for updates the old one); etcd caps objects at 1.5 MiB.
MAX_BODY_BYTES = 8 * 1024 * 1024


async def _read_review(request: web.Request) -> Any:
    """The JSON body, or ``None`` when it cannot be read: not JSON, nested too deeply (RecursionError), or
    not received within ``BODY_TIMEOUT_S``. ``review()`` answers ``None`` by allowing the pod (fail open)."""
    try:
        async with asyncio.timeout(service.BODY_TIMEOUT_S):
            return await request.json(loads=json.loads)
    except (ValueError, RecursionError, TimeoutError):
        return None


class CertificateReloader:
    """An ``SSLContext`` that loads ``cert``/``key`` again when either file's mtime or size changes.

    Reloading into the same context is enough: each new TLS connection takes the context's current
    certificate, connections already open keep theirs.
    """

    def __init__(self, cert: str, key: str) -> None:
        self.cert, self.key = cert, key
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._stamp = self._current()
        self.context.load_cert_chain(cert, key)
        self.reloads = 0

    def _current(self) -> tuple[tuple[int, int], ...]:
        return tuple((st.st_mtime_ns, st.st_size) for st in (os.stat(self.cert), os.stat(self.key)))

    def maybe_reload(self) -> bool:
        """Reload when the files changed; a half-written or mismatched pair keeps the old certificate."""
        try:
            stamp = self._current()
            if stamp == self._stamp:
                return False
            # Try the pair on a scratch context first: a failed load_cert_chain can leave the live
            # context holding the new certificate with the old key.
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self.cert, self.key)
            self.context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as e:
            log.warning("cannot reload the serving certificate, keeping the old one: %s", e)
            return False
        self._stamp = stamp
        self.reloads += 1
        log.info("serving certificate reloaded from %s", self.cert)
        return True


class WebhookServer:
    """``start()`` binds ``settings.listen`` (HTTPS when ``tls_cert`` or ``self_signed`` is set); ``shutdown()``
    is idempotent."""

    def __init__(self, settings: InjectorSettings, *, metrics: WebhookMetrics | None = None,
                 namespace_labels: NamespaceLabels | None = None,
                 kubernetes_api: Callable[[], Any] | None = None, patch_backoff_s: float = 1.0) -> None:
        """``kubernetes_api`` (``self_signed`` only) makes the ``AdmissionregistrationV1Api`` that patches
        the caBundle; default: in-cluster config from the pod's service-account token."""
        self.settings = settings
        self._kubernetes_api = kubernetes_api if kubernetes_api is not None else self_signed.in_cluster_api
        self._patch_backoff_s = patch_backoff_s
        self._tls_dir: tempfile.TemporaryDirectory[str] | None = None
        self._patch_task: asyncio.Task[bool] | None = None
        #: ``self_signed``: the generated CA certificate (PEM), and whether the caBundle patch succeeded.
        self.ca_pem = b""
        self.ca_bundle_patched: bool | None = None
        self.metrics = metrics if metrics is not None else WebhookMetrics()
        self.tasks = TaskSupervisor(self.metrics.registry, "sentinel_webhook")
        self._namespace_labels = namespace_labels
        self._runner: web.AppRunner | None = None
        self._reload_task: asyncio.Task[None] | None = None
        self.certificates: CertificateReloader | None = None
        self.port = 0

    async def _mutate(self, request: web.Request) -> web.Response:
        body = await _read_review(request)
        return web.json_response(review(body, self._namespace_labels, self.settings, self.metrics))

    async def _mutate_enabled_namespace(self, request: web.Request) -> web.Response:
        # AdmissionReview carries no namespace labels. The MutatingWebhookConfiguration routes pods of
        # namespaces labelled sentinel.llm-devops.io/inject=enabled here (its namespaceSelector does
        # the selection), so this path means "the namespace opted in" — no RBAC to read namespaces.
        body = await _read_review(request)

        def enabled(_namespace: str) -> Mapping[str, str]:
            return {NAMESPACE_LABEL: NAMESPACE_ENABLED}

        return web.json_response(review(body, enabled, self.settings, self.metrics))

    def _ready(self) -> str:
        return self.tasks.problem() if self._runner is not None else "not started"

    async def _reload_loop(self) -> None:
        assert self.certificates is not None
        while True:
            await asyncio.sleep(self.settings.tls_reload_s)
            self.certificates.maybe_reload()

    def _self_signed_files(self) -> tuple[str, str]:
        """Generate the CA and serving certificate; write the pair to a private temp dir."""
        namespace = self.settings.namespace()
        self.ca_pem, cert_pem, key_pem = self_signed.generate(self.settings.service_name, namespace)
        self._tls_dir = tempfile.TemporaryDirectory(prefix="sentinel-webhook-tls-")
        cert, key = Path(self._tls_dir.name, "tls.crt"), Path(self._tls_dir.name, "tls.key")
        cert.write_bytes(cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(key_pem)
        log.info("self-signed: serving certificate for %s", ", ".join(
            self_signed.dns_names(self.settings.service_name, namespace)))
        return str(cert), str(key)

    async def _patch_ca_bundle(self) -> bool:
        self.ca_bundle_patched = await self_signed.patch_ca_bundle_with_retry(
            self._kubernetes_api, self.settings.webhook_config_name, self.ca_pem, backoff_s=self._patch_backoff_s)
        return self.ca_bundle_patched

    async def start(self) -> None:
        ssl_context = None
        if self.settings.self_signed:
            cert, key = self._self_signed_files()
            self.certificates = CertificateReloader(cert, key)
            ssl_context = self.certificates.context
        elif self.settings.tls_cert:
            self.certificates = CertificateReloader(self.settings.tls_cert, self.settings.tls_key)
            ssl_context = self.certificates.context
        else:
            log.warning("no tls_cert: serving plain HTTP (the Kubernetes API server requires HTTPS)")
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/mutate", self._mutate)
        app.router.add_post(ENABLED_NAMESPACE_PATH, self._mutate_enabled_namespace)
        add_ops_routes(app, self.metrics.registry, self._ready)
        # auto_decompress=False: the API server never compresses AdmissionReviews, and aiohttp's own inflation
        # buffers about ten times client_max_size before it refuses a decompression bomb.
        runner = web.AppRunner(app, access_log=None, keepalive_timeout=service.IDLE_TIMEOUT_S, auto_decompress=False)
        await runner.setup()
        host, _, port = self.settings.listen.rpartition(":")
        try:
            await web.TCPSite(runner, host, int(port), ssl_context=ssl_context).start()
        except BaseException:
            await runner.cleanup()
            self._cleanup_tls_dir()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        if self.settings.self_signed:
            # In the background: serving starts at once (probes pass) while the patch is retried; if it
            # never succeeds the webhook keeps serving, but the API server cannot verify it.
            self._patch_task = asyncio.create_task(self._patch_ca_bundle())
        elif self.certificates is not None:
            self._reload_task = self.tasks.spawn("tls-reload", self._reload_loop)
        log.info("webhook on %s://%s:%d/mutate", "https" if ssl_context else "http", host, self.port)

    async def wait_ca_bundle(self) -> bool | None:
        """Wait for the background caBundle patch (``self_signed``); ``None`` when there is none."""
        if self._patch_task is None:
            return None
        return await asyncio.shield(self._patch_task)

    def _cleanup_tls_dir(self) -> None:
        if self._tls_dir is not None:
            self._tls_dir.cleanup()
            self._tls_dir = None

    async def shutdown(self) -> None:
        if self._patch_task is not None:
            self._patch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._patch_task
            self._patch_task = None
        if self._reload_task is not None:
            self._reload_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reload_task
            self._reload_task = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._cleanup_tls_dir()


async def run(settings: InjectorSettings, reload_settings: Callable[[], InjectorSettings] | None = None) -> int:
    """``sentinel webhook``: serve until SIGTERM or SIGINT. SIGHUP re-reads the settings with
    ``reload_settings``: ``log_level`` applies, every other changed key is logged as needing a restart."""
    from sentinel.reload import SettingsReloader
    from sentinel.service import run_until_signalled

    reloader = SettingsReloader(settings, reload_settings) if reload_settings is not None else None
    return await run_until_signalled(WebhookServer(settings), (OSError, ssl.SSLError),
                                     on_reload=reloader.reload if reloader is not None else None)
