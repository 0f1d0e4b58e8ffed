"""The webhook's settings: one dataclass, its defaults as named constants, and ``validate()``."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from decimal import Decimal

from sentinel.config import ConfigError, setting

__all__ = [
    "DEFAULT_CPU_LIMIT",
    "DEFAULT_CPU_REQUEST",
    "DEFAULT_IMAGE",
    "DEFAULT_LISTEN",
    "DEFAULT_MEMORY_LIMIT",
    "DEFAULT_MEMORY_REQUEST",
    "DEFAULT_SPOOL_SIZE_LIMIT",
    "MODES",
    "InjectorSettings",
]

DEFAULT_IMAGE = "ghcr.io/llm-devops/llm-sentinel:latest"
DEFAULT_LISTEN = "0.0.0.0:8443"
DEFAULT_CPU_REQUEST = "100m"
DEFAULT_MEMORY_REQUEST = "128Mi"
DEFAULT_CPU_LIMIT = "200m"
DEFAULT_MEMORY_LIMIT = "256Mi"
DEFAULT_SPOOL_SIZE_LIMIT = "512Mi"
DEFAULT_SPOOL_MOUNT_PATH = "/var/lib/sentinel/spool"
DEFAULT_TOKEN_SECRET_NAME = "sentinel-token"
DEFAULT_TOKEN_SECRET_KEY = "token"
DEFAULT_RUN_AS_USER = 65532
DEFAULT_TLS_RELOAD_S = 10.0
DEFAULT_WEBHOOK_CONFIG_NAME = "sentinel-webhook"
DEFAULT_SERVICE_NAME = "sentinel-webhook"
DEFAULT_SERVICE_NAMESPACE = "llm-sentinel"

MODES = ("sidecar", "store-and-forward")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")

# A Kubernetes resource quantity: "100m", "0.5", "128Mi", "1G", "1e3".
_QUANTITY_RE = re.compile(r"^[+]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|[kMGTPE]i?|m|)?$")


def is_quantity(value: str) -> bool:
    """Whether ``value`` parses as a Kubernetes resource quantity."""
    return bool(_QUANTITY_RE.match(value))


_SUFFIX: dict[str, Decimal | int] = {"": 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9,
                                     "T": 10**12, "P": 10**15, "E": 10**18, "Ki": 2**10, "Mi": 2**20,
                                     "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity(value: str) -> Decimal:
    """The amount a Kubernetes quantity stands for (cores, bytes); ``value`` must pass :func:`is_quantity`.

    >>> [str(quantity(q)) for q in ("500m", "64Mi", "1e3", "0.5")]
    ['0.500', '67108864', '1000', '0.5']
    """
    m = _QUANTITY_RE.match(value)
    if m is None:
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    number, suffix = Decimal(m.group(1)), m.group(3) or ""
    if suffix[:1] in ("e", "E") and suffix not in _SUFFIX:
        return number * Decimal(10) ** int(suffix[1:])
    return number * _SUFFIX[suffix]


def _hostport(key: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: {value!r} is not HOST:PORT")


@dataclass
class InjectorSettings:
    """Every setting of ``sentinel webhook`` (see ``webhook_injector/README.md`` for the table)."""

    listen: str = setting(DEFAULT_LISTEN, "HTTPS listen address of the webhook (POST /mutate, /metrics, "
                          "/healthz, /readyz)")
    tls_cert: str = setting("", "PEM certificate chain of the serving certificate (e.g. mounted by "
                            "cert-manager); reloaded when the file changes")
    tls_key: str = setting("", "PEM private key of the serving certificate; reloaded when the file changes")
    tls_reload_s: float = setting(DEFAULT_TLS_RELOAD_S, "how often to check the certificate files for a "
                                  "change", kind="duration")
    self_signed: bool = setting(False, "generate a CA and serving certificate at start-up and patch the "
                                "MutatingWebhookConfiguration's caBundle (no cert-manager; excludes tls_cert)")
    webhook_config_name: str = setting(DEFAULT_WEBHOOK_CONFIG_NAME, "self_signed: the "
                                       "MutatingWebhookConfiguration whose caBundle is patched")
    service_name: str = setting(DEFAULT_SERVICE_NAME, "self_signed: the webhook's Service (the certificate's "
                                "DNS names)")
    service_namespace: str = setting("", "self_signed: the Service's namespace; empty: env POD_NAMESPACE "
                                     f"(downward API), else {DEFAULT_SERVICE_NAMESPACE}")
    image: str = setting(DEFAULT_IMAGE, "image of the injected sidecar container")
    image_pull_policy: str = setting("IfNotPresent", "imagePullPolicy of the sidecar: Always, IfNotPresent "
                                     "or Never")
    aggregator_url: str = setting("", "aggregator base URL given to every sidecar (SENTINEL_AGGREGATOR_URL)")
    token_secret_name: str = setting(DEFAULT_TOKEN_SECRET_NAME, "Secret (in the pod's namespace) holding the "
                                     "aggregator token; empty: no SENTINEL_TOKEN")
    token_secret_key: str = setting(DEFAULT_TOKEN_SECRET_KEY, "key of the token in that Secret")
    mode: str = setting("sidecar", "default sidecar mode: sidecar or store-and-forward (per pod: annotation "
                        "sentinel.llm-devops.io/mode)")
    native_sidecar: bool = setting(False, "inject an init container with restartPolicy Always (Kubernetes "
                                   ">= 1.29) instead of a classic container (per pod: annotation "
                                   "sentinel.llm-devops.io/native-sidecar)")
    cpu_request: str = setting(DEFAULT_CPU_REQUEST, "default CPU request of the sidecar")
    memory_request: str = setting(DEFAULT_MEMORY_REQUEST, "default memory request of the sidecar")
    cpu_limit: str = setting(DEFAULT_CPU_LIMIT, "default CPU limit of the sidecar")
    memory_limit: str = setting(DEFAULT_MEMORY_LIMIT, "default memory limit of the sidecar")
    spool_size_limit: str = setting(DEFAULT_SPOOL_SIZE_LIMIT, "sizeLimit of the emptyDir spool volume "
                                    "(a Kubernetes quantity)")
    spool_mount_path: str = setting(DEFAULT_SPOOL_MOUNT_PATH, "where the spool volume is mounted in the "
                                    "sidecar (SENTINEL_SPOOL_DIRECTORY)")
    run_as_user: int = setting(DEFAULT_RUN_AS_USER, "UID the sidecar runs as (non-root)")
    log_level: str = setting("info", "debug, info, warning or error")

    def validate(self) -> None:
        _hostport("listen", self.listen)
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert: tls_cert and tls_key must be given together")
        if self.self_signed and self.tls_cert:
            raise ConfigError("self_signed: excludes tls_cert/tls_key (give one or the other)")
        if self.self_signed:
            for key in ("webhook_config_name", "service_name"):
                if not getattr(self, key):
                    raise ConfigError(f"{key}: required with self_signed")
        if self.tls_reload_s <= 0:
            raise ConfigError("tls_reload_s: must be greater than 0")
        if not self.image:
            raise ConfigError("image: must not be empty")
        if self.image_pull_policy not in PULL_POLICIES:
            raise ConfigError(f"image_pull_policy: {self.image_pull_policy!r} is not one of "
                              f"{', '.join(PULL_POLICIES)}")
        if self.mode not in MODES:
            raise ConfigError(f"mode: {self.mode!r} is not one of {', '.join(MODES)}")
        if self.aggregator_url and not self.aggregator_url.startswith(("http://", "https://")):
            raise ConfigError(f"aggregator_url: {self.aggregator_url!r} must start with http:// or https://")
        if self.token_secret_name and not self.token_secret_key:
            raise ConfigError("token_secret_key: required when token_secret_name is set")
        for key in ("cpu_request", "memory_request", "cpu_limit", "memory_limit", "spool_size_limit"):
            if not is_quantity(getattr(self, key)):
                raise ConfigError(f"{key}: {getattr(self, key)!r} is not a Kubernetes quantity")
        if not self.spool_mount_path.startswith("/"):
            raise ConfigError("spool_mount_path: must be an absolute path")
        if self.run_as_user <= 0:
            raise ConfigError("run_as_user: must be a non-root UID (greater than 0)")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level: {self.log_level!r} is not debug, info, warning or error")

    def namespace(self) -> str:
        """``service_namespace``, else env ``POD_NAMESPACE`` (the downward API), else ``llm-sentinel``."""
        return self.service_namespace or os.environ.get("POD_NAMESPACE") or DEFAULT_SERVICE_NAMESPACE
