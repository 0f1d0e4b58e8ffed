"""``--self-signed``: a throwaway CA and serving certificate made at start-up, and the CA written into
the MutatingWebhookConfiguration's ``caBundle`` through the Kubernetes API.

Used when cert-manager is not installed. The CA's private key never leaves the process (it is not even
written to disk): a restart makes a new CA and patches the ``caBundle`` again.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DEFAULT_DAYS", "dns_names", "generate", "patch_ca_bundle", "patch_ca_bundle_with_retry"]

log = logging.getLogger(__name__)

#: Validity of the CA and the serving certificate; the pod is restarted long before that in practice.
DEFAULT_DAYS = 365


def dns_names(service: str, namespace: str) -> list[str]:
    """The names the API server may use for ``service`` in ``namespace``."""
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.cluster.local"]


def generate(service: str, namespace: str, days: int = DEFAULT_DAYS) -> tuple[bytes, bytes, bytes]:
    """A new CA and a serving certificate it signed for the service's DNS names.

    Returns ``(ca_pem, cert_pem, key_pem)``: the CA certificate (for the ``caBundle``), the serving
    certificate and its private key (PKCS#8, unencrypted). ECDSA P-256 keys.
    """
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{service}.{namespace} webhook CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = dns_names(service, namespace)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[2])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca_cert.public_bytes(pem), cert.public_bytes(pem), key_pem


def in_cluster_api() -> Any:
    """An ``AdmissionregistrationV1Api`` from the pod's service-account token (in-cluster config)."""
    from kubernetes import client, config

    config.load_incluster_config()  # type: ignore[no-untyped-call]
    return client.AdmissionregistrationV1Api()


def patch_ca_bundle(api: Any, name: str, ca_pem: bytes) -> int:
    """Set ``clientConfig.caBundle`` of every webhook in the MutatingWebhookConfiguration ``name``.

    ``api`` is a ``kubernetes.client.AdmissionregistrationV1Api``. The configuration is read first, then
    changed with one JSON Patch (RFC 6902): for each webhook a ``test`` of its name at its index (so a
    concurrent edit that reorders the list fails the whole patch instead of crossing bundles) and an
    ``add`` of ``/webhooks/<i>/clientConfig/caBundle`` (``add`` replaces an existing value). Nothing else
    of the object is touched; RBAC needs only ``get`` and ``patch`` on that one name. Blocking: call it
    from async code through :func:`patch_ca_bundle_with_retry` or ``asyncio.to_thread``. Returns how
    many webhooks were patched.
    """
    current = api.read_mutating_webhook_configuration(name)
    webhooks: Sequence[Any] = current.webhooks or []
    bundle = base64.b64encode(ca_pem).decode("ascii")
    body: list[dict[str, Any]] = []
    for i, w in enumerate(webhooks):
        body.append({"op": "test", "path": f"/webhooks/{i}/name", "value": w.name})
        body.append({"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": bundle})
    if body:
        api.patch_mutating_webhook_configuration(name, body, _content_type="application/json-patch+json")
    return len(webhooks)


async def patch_ca_bundle_with_retry(api: Any, name: str, ca_pem: bytes, *, attempts: int = 5,
                                     backoff_s: float = 1.0) -> bool:
    """:func:`patch_ca_bundle` in a thread, retried with exponential backoff; ``False`` when all failed.

    ``api`` may be a zero-argument callable returning the API object (made in the thread, so a missing
    in-cluster config counts as a failed attempt too).
    """
    delay = backoff_s
    for attempt in range(1, attempts + 1):
        try:
            target = api() if callable(api) else api
            n = await asyncio.to_thread(patch_ca_bundle, target, name, ca_pem)
        except Exception as e:  # any API, network or config error: log and retry
            log.warning("cannot patch the caBundle of MutatingWebhookConfiguration %s (attempt %d/%d): %s",
                        name, attempt, attempts, e)
            if attempt < attempts:
                await asyncio.sleep(delay)
                delay *= 2
            continue
        log.info("caBundle of MutatingWebhookConfiguration %s set on %d webhook(s)", name, n)
        return True
    log.error("giving up patching the caBundle of MutatingWebhookConfiguration %s: the API server cannot "
              "verify this webhook, so pods are admitted without the sidecar (failurePolicy Ignore)", name)
    return False
