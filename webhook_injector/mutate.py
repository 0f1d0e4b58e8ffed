"""The pure pod mutation: decide whether a pod gets the sidecar, and inject it idempotently.

Nothing here touches the network or the clock: a pod (a ``dict`` as decoded from the
AdmissionReview), the namespace's labels and the settings go in, a new pod comes out, so
``mutate(mutate(p)) == mutate(p)`` and the table-driven tests need no server.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from webhook_injector.settings import MODES, InjectorSettings, is_quantity, quantity

__all__ = [
    "ANNOTATION_CPU_LIMIT",
    "ANNOTATION_CPU_REQUEST",
    "ANNOTATION_INJECT",
    "ANNOTATION_MEMORY_LIMIT",
    "ANNOTATION_MEMORY_REQUEST",
    "ANNOTATION_MODE",
    "ANNOTATION_NATIVE_SIDECAR",
    "ANNOTATION_SPOOL_HOST_PATH",
    "ANNOTATION_SPOOL_PVC",
    "ANNOTATION_STATUS",
    "INJECT_REASONS",
    "LABEL_INJECTED",
    "NAMESPACE_LABEL",
    "SIDECAR_NAME",
    "SKIP_REASONS",
    "STATUS_INJECTED",
    "Pod",
    "annotation_warnings",
    "mutate",
    "should_inject",
]

Pod = dict[str, Any]

PREFIX = "sentinel.llm-devops.io/"
ANNOTATION_INJECT = PREFIX + "inject"
ANNOTATION_STATUS = PREFIX + "status"
ANNOTATION_NATIVE_SIDECAR = PREFIX + "native-sidecar"
ANNOTATION_MODE = PREFIX + "mode"
ANNOTATION_SPOOL_PVC = PREFIX + "spool-pvc"
ANNOTATION_SPOOL_HOST_PATH = PREFIX + "spool-host-path"
ANNOTATION_CPU_REQUEST = PREFIX + "cpu-request"
ANNOTATION_MEMORY_REQUEST = PREFIX + "memory-request"
ANNOTATION_CPU_LIMIT = PREFIX + "cpu-limit"
ANNOTATION_MEMORY_LIMIT = PREFIX + "memory-limit"
NAMESPACE_LABEL = PREFIX + "inject"
NAMESPACE_ENABLED = "enabled"
STATUS_INJECTED = "injected"
#: Label on injected pods, so the aggregator's NetworkPolicy can admit them.
LABEL_INJECTED = PREFIX + "injected"

SIDECAR_NAME = "sentinel-sidecar"
SPOOL_VOLUME = "sentinel-spool"
GRPC_PORT = 4317
HTTP_PORT = 4318
OPS_PORT = 8081
#: Classic mode: the sidecar's SIGTERM is held back this long, so the app's last export on its own
#: shutdown still finds the sidecar listening; the sidecar then flushes for its shutdown_grace_s.
PRESTOP_DELAY_S = 5
SIDECAR_GRPC_ENDPOINT = f"http://localhost:{GRPC_PORT}"
SIDECAR_HTTP_ENDPOINT = f"http://localhost:{HTTP_PORT}"
OTEL_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
OTEL_PROTOCOL = "OTEL_EXPORTER_OTLP_PROTOCOL"

#: Reasons ``should_inject`` gives for injecting (not counted as skips).
INJECT_REASONS = ("pod_annotation", "namespace_label")
#: Reasons ``should_inject`` gives for skipping: the ``reason`` label of ``sentinel_webhook_skipped_total``.
SKIP_REASONS = ("not_requested", "pod_opt_out", "invalid_annotation", "already_injected", "host_network",
                "port_conflict")
#: Not a skip: the API server calling again (``reinvocationPolicy: IfNeeded``) a pod we injected.
REINVOKED = "reinvoked"
#: Where Kubernetes mounts the pod's service-account token; the sidecar gets an empty directory there.
SERVICE_ACCOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
NO_TOKEN_VOLUME = "sentinel-no-sa-token"


def _annotations(pod: Mapping[str, Any]) -> dict[str, Any]:
    meta = pod.get("metadata") or {}
    return dict(meta.get("annotations") or {})


def _containers(pod: Mapping[str, Any], kind: str) -> list[dict[str, Any]]:
    return list((pod.get("spec") or {}).get(kind) or [])


def _has_sidecar(pod: Mapping[str, Any]) -> bool:
    return any(c.get("name") == SIDECAR_NAME
               for kind in ("containers", "initContainers") for c in _containers(pod, kind))


def should_inject(pod: Mapping[str, Any], namespace_labels: Mapping[str, str],
                  settings: InjectorSettings) -> tuple[bool, str]:
    """``(True, reason)`` when the pod gets the sidecar, else ``(False, reason)``; reasons are
    :data:`INJECT_REASONS` and :data:`SKIP_REASONS`.

    >>> should_inject({"metadata": {"annotations": {ANNOTATION_INJECT: "true"}}}, {}, InjectorSettings())
    (True, 'pod_annotation')
    """
    value = str(_annotations(pod).get(ANNOTATION_INJECT, "")).strip().lower()
    if value == "false":
        return False, "pod_opt_out"
    if value not in ("", "true"):
        return False, "invalid_annotation"
    if value == "true":
        reason = "pod_annotation"
    elif namespace_labels.get(NAMESPACE_LABEL) == NAMESPACE_ENABLED:
        reason = "namespace_label"
    else:
        return False, "not_requested"
    if _annotations(pod).get(ANNOTATION_STATUS) == STATUS_INJECTED and _has_sidecar(pod):
        return False, REINVOKED  # our own earlier pass: the API server called again
    if _annotations(pod).get(ANNOTATION_STATUS) == STATUS_INJECTED or _has_sidecar(pod):
        return False, "already_injected"
    if (pod.get("spec") or {}).get("hostNetwork"):
        # With hostNetwork the pod shares the node's network namespace: the sidecar's 127.0.0.1:4317
        # and :8081 would be the node's, so a second such pod on the node cannot bind them and the
        # app's "localhost" exporter could reach another pod's sidecar. Such workloads run the
        # sidecar as a DaemonSet or plain process instead (deploy/k8s edge overlay).
        return False, "host_network"
    if _taken_ports(pod):
        # The app already declares one of the sidecar's ports: both would bind it in the pod's one
        # network namespace (the API server only warns "duplicate port definition").
        return False, "port_conflict"
    return True, reason


def _taken_ports(pod: Mapping[str, Any]) -> list[int]:
    """The sidecar's ports that an app container or init container already declares."""
    ours = {GRPC_PORT, HTTP_PORT, OPS_PORT}
    return sorted({int(p.get("containerPort", 0)) for kind in ("containers", "initContainers")
                   for c in _containers(pod, kind) if c.get("name") != SIDECAR_NAME
                   for p in c.get("ports") or [] if p.get("containerPort") in ours})


def _bool_annotation(annotations: Mapping[str, Any], key: str, default: bool) -> bool:
    value = str(annotations.get(key, "")).strip().lower()
    if value in ("true", "false"):
        return value == "true"
    return default


def _mode(annotations: Mapping[str, Any], settings: InjectorSettings) -> str:
    value = str(annotations.get(ANNOTATION_MODE, "")).strip()
    return value if value in MODES else settings.mode


_RESOURCE_ANNOTATIONS = (
    ("requests", "cpu", ANNOTATION_CPU_REQUEST, "cpu_request"),
    ("requests", "memory", ANNOTATION_MEMORY_REQUEST, "memory_request"),
    ("limits", "cpu", ANNOTATION_CPU_LIMIT, "cpu_limit"),
    ("limits", "memory", ANNOTATION_MEMORY_LIMIT, "memory_limit"),
)


def _requested_resources(annotations: Mapping[str, Any], settings: InjectorSettings) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {"requests": {}, "limits": {}}
    for section, resource, key, attr in _RESOURCE_ANNOTATIONS:
        value = str(annotations.get(key, "")).strip()
        out[section][resource] = value if value and is_quantity(value) else getattr(settings, attr)
    return out


def _resources(annotations: Mapping[str, Any], settings: InjectorSettings) -> tuple[dict[str, dict[str, str]],
                                                                                     list[str]]:
    """The sidecar's requests and limits with every request ≤ its limit, and what was raised to get there.

    A request above its limit makes the API server reject the *team's* pod; so the side the
    annotation did not set follows the one it did (a request raised to the annotated limit, or a
    limit raised to the annotated request), and the change is said in a warning.
    """
    out = _requested_resources(annotations, settings)
    notes: list[str] = []
    for resource in ("cpu", "memory"):
        request, limit = out["requests"][resource], out["limits"][resource]
        if quantity(request) <= quantity(limit):
            continue
        limit_key = ANNOTATION_CPU_LIMIT if resource == "cpu" else ANNOTATION_MEMORY_LIMIT
        if str(annotations.get(limit_key, "")).strip() == limit:  # the limit was asked for: lower the request
            out["requests"][resource] = limit
            notes.append(f"sidecar {resource} request {request} is above its limit {limit}; using {limit} for both")
        else:
            out["limits"][resource] = request
            notes.append(f"sidecar {resource} request {request} is above its limit {limit}; using {request} for both")
    return out, notes


def annotation_warnings(pod: Mapping[str, Any], settings: InjectorSettings) -> list[str]:
    """Human-readable warnings about annotations that were ignored (returned to ``kubectl``)."""
    annotations = _annotations(pod)
    warnings: list[str] = []
    inject = str(annotations.get(ANNOTATION_INJECT, "")).strip().lower()
    if inject not in ("", "true", "false"):
        warnings.append(f"{ANNOTATION_INJECT}: {annotations[ANNOTATION_INJECT]!r} is not \"true\" or "
                        "\"false\"; sidecar not injected")
    native = str(annotations.get(ANNOTATION_NATIVE_SIDECAR, "")).strip().lower()
    if native not in ("", "true", "false"):
        warnings.append(f"{ANNOTATION_NATIVE_SIDECAR}: {annotations[ANNOTATION_NATIVE_SIDECAR]!r} is not "
                        f"\"true\" or \"false\"; using {str(settings.native_sidecar).lower()}")
    mode = str(annotations.get(ANNOTATION_MODE, "")).strip()
    if mode and mode not in MODES:
        warnings.append(f"{ANNOTATION_MODE}: {mode!r} is not one of {', '.join(MODES)}; using {settings.mode}")
    for _section, _resource, key, attr in _RESOURCE_ANNOTATIONS:
        value = str(annotations.get(key, "")).strip()
        if value and not is_quantity(value):
            warnings.append(f"{key}: {value!r} is not a Kubernetes quantity; using {getattr(settings, attr)}")
    warnings += _resources(annotations, settings)[1]
    if str(annotations.get(ANNOTATION_SPOOL_HOST_PATH, "")).strip():
        warnings.append(f"{ANNOTATION_SPOOL_HOST_PATH}: hostPath volumes are forbidden by PodSecurity baseline "
                        f"and restricted; in such a namespace the pod is rejected (use {ANNOTATION_SPOOL_PVC})")
    taken = _taken_ports(pod)
    if taken:
        warnings.append(f"port {', '.join(map(str, taken))} of the sentinel sidecar is already declared by a "
                        f"container of this pod; sidecar not injected")
    return warnings


def _env_value(container: Mapping[str, Any], name: str) -> tuple[bool, str | None]:
    """``(present, value)``: value ``None`` when the variable comes from ``valueFrom``."""
    for var in container.get("env") or []:
        if var.get("name") == name:
            return True, var.get("value") if "valueFrom" not in var else None
    return False, None


def _set_env(container: dict[str, Any], name: str, value: str) -> None:
    env = container.setdefault("env", [])
    for var in env:
        if var.get("name") == name:
            var.clear()
            var.update({"name": name, "value": value})
            return
    env.append({"name": name, "value": value})


def _with_scheme(endpoint: str) -> str:
    # The sidecar's upstream must be a URL; OTel SDKs also accept a bare host:port for gRPC.
    return endpoint if endpoint.startswith(("http://", "https://")) else "http://" + endpoint


def _point_apps_at_sidecar(pod: Pod) -> tuple[str, str]:
    """Point every app container's OTLP exporter at the sidecar; return the app's own endpoint and
    protocol (``("", "")`` when none), which the sidecar then passes everything on to."""
    upstream, upstream_protocol = "", ""
    for container in _containers(pod, "containers"):
        if container.get("name") == SIDECAR_NAME:
            continue
        has_endpoint, endpoint = _env_value(container, OTEL_ENDPOINT)
        has_protocol, protocol = _env_value(container, OTEL_PROTOCOL)
        if has_endpoint and endpoint is None:
            continue  # from a ConfigMap or Secret: unknown here, so the app keeps its own exporter
        own = endpoint not in (None, "", SIDECAR_GRPC_ENDPOINT, SIDECAR_HTTP_ENDPOINT)
        if own and endpoint is not None and not upstream:
            upstream = _with_scheme(endpoint)
            if protocol in ("grpc", "http/protobuf"):
                upstream_protocol = protocol
            else:
                upstream_protocol = "http/protobuf" if upstream.rstrip("/").endswith(f":{HTTP_PORT}") else "grpc"
        if not has_protocol:
            _set_env(container, OTEL_PROTOCOL, "grpc")
            protocol = "grpc"
        target = SIDECAR_GRPC_ENDPOINT if protocol == "grpc" else SIDECAR_HTTP_ENDPOINT
        if not has_endpoint or own:
            _set_env(container, OTEL_ENDPOINT, target)
    return upstream, upstream_protocol


def _spool_volume(annotations: Mapping[str, Any], mode: str, settings: InjectorSettings) -> dict[str, Any]:
    if mode == "store-and-forward":
        pvc = str(annotations.get(ANNOTATION_SPOOL_PVC, "")).strip()
        if pvc:
            return {"name": SPOOL_VOLUME, "persistentVolumeClaim": {"claimName": pvc}}
        host_path = str(annotations.get(ANNOTATION_SPOOL_HOST_PATH, "")).strip()
        if host_path:
            return {"name": SPOOL_VOLUME, "hostPath": {"path": host_path, "type": "DirectoryOrCreate"}}
    return {"name": SPOOL_VOLUME, "emptyDir": {"sizeLimit": settings.spool_size_limit}}


def _http_probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": OPS_PORT}, "periodSeconds": period, "failureThreshold": failures}


def _sidecar(mode: str, native: bool, resources: dict[str, dict[str, str]], upstream: tuple[str, str],
             settings: InjectorSettings) -> dict[str, Any]:
    env: list[dict[str, Any]] = [
        {"name": "SENTINEL_MODE", "value": mode},
        {"name": "SENTINEL_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "SENTINEL_POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "SENTINEL_GRPC_LISTEN", "value": f"127.0.0.1:{GRPC_PORT}"},
        {"name": "SENTINEL_HTTP_LISTEN", "value": f"127.0.0.1:{HTTP_PORT}"},
        {"name": "SENTINEL_METRICS_LISTEN", "value": f"0.0.0.0:{OPS_PORT}"},
        {"name": "SENTINEL_SPOOL_DIRECTORY", "value": settings.spool_mount_path},
    ]
    if settings.aggregator_url:
        env.append({"name": "SENTINEL_AGGREGATOR_URL", "value": settings.aggregator_url})
    if settings.token_secret_name:
        # optional: a missing Secret must not keep the pod (or, natively, the app) from starting.
        env.append({"name": "SENTINEL_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": settings.token_secret_name, "key": settings.token_secret_key, "optional": True}}})
    if upstream[0]:
        env.append({"name": "SENTINEL_UPSTREAM_URL", "value": upstream[0]})
        env.append({"name": "SENTINEL_UPSTREAM_PROTOCOL", "value": upstream[1]})
    container: dict[str, Any] = {
        "name": SIDECAR_NAME,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": ["sidecar"],
        "ports": [
            {"name": "sentinel-grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "sentinel-http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "sentinel-ops", "containerPort": OPS_PORT, "protocol": "TCP"},
        ],
        "env": env,
        "resources": resources,
        "readinessProbe": _http_probe("/readyz", period=5, failures=3),
        "livenessProbe": _http_probe("/healthz", period=10, failures=3),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # An empty directory where Kubernetes would mount the pod's service-account token: the
        # sidecar talks to no Kubernetes API, so it gets no credential (the ServiceAccount admission
        # plugin leaves a container that already mounts this path alone).
        "volumeMounts": [{"name": SPOOL_VOLUME, "mountPath": settings.spool_mount_path},
                         {"name": NO_TOKEN_VOLUME, "mountPath": SERVICE_ACCOUNT_PATH, "readOnly": True}],
    }
    if native:
        # Started (listening) before the next init container and the app: the kubelet waits for it.
        container["restartPolicy"] = "Always"
        container["startupProbe"] = _http_probe("/readyz", period=1, failures=30)
    else:
        container["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_DELAY_S)]}}}
    return container


def _existing_upstream(pod: Pod) -> tuple[str, str]:
    for kind in ("containers", "initContainers"):
        for c in _containers(pod, kind):
            if c.get("name") == SIDECAR_NAME:
                # SENTINEL_UPSTREAM: the name before upstream became a section (pods injected earlier).
                _, url = _env_value(c, "SENTINEL_UPSTREAM_URL")
                url = url or _env_value(c, "SENTINEL_UPSTREAM")[1]
                _, protocol = _env_value(c, "SENTINEL_UPSTREAM_PROTOCOL")
                if url:
                    return url, protocol or "grpc"
    return "", ""


def _put(items: list[dict[str, Any]], item: dict[str, Any], *, first: bool) -> None:
    """Replace the entry of the same name in place, else insert (first) or append."""
    for i, existing in enumerate(items):
        if existing.get("name") == item["name"]:
            items[i] = item
            return
    if first:
        items.insert(0, item)
    else:
        items.append(item)


def inject(pod: Pod, settings: InjectorSettings) -> Pod:
    """Add the sidecar to a copy of ``pod`` regardless of the decision; idempotent by itself."""
    pod = copy.deepcopy(pod)
    annotations = _annotations(pod)
    mode = _mode(annotations, settings)
    native = _bool_annotation(annotations, ANNOTATION_NATIVE_SIDECAR, settings.native_sidecar)
    spec = pod.setdefault("spec", {})
    previous = _existing_upstream(pod)
    upstream = _point_apps_at_sidecar(pod)
    if not upstream[0]:
        upstream = previous  # already rewritten on an earlier pass: keep what the sidecar was given
    sidecar = _sidecar(mode, native, _resources(annotations, settings)[0], upstream, settings)
    target, other = ("initContainers", "containers") if native else ("containers", "initContainers")
    if spec.get(other):
        spec[other] = [c for c in spec[other] if c.get("name") != SIDECAR_NAME]
    _put(spec.setdefault(target, []), sidecar, first=native)
    _put(spec.setdefault("volumes", []), _spool_volume(annotations, mode, settings), first=False)
    _put(spec["volumes"], {"name": NO_TOKEN_VOLUME, "emptyDir": {"sizeLimit": "1Ki"}}, first=False)
    meta = pod.setdefault("metadata", {})
    meta["annotations"] = {**annotations, ANNOTATION_STATUS: STATUS_INJECTED}
    # A label as well: NetworkPolicies (deploy/k8s) can select labels, not annotations.
    meta["labels"] = {**(meta.get("labels") or {}), LABEL_INJECTED: "true"}
    return pod


def mutate(pod: Mapping[str, Any], namespace_labels: Mapping[str, str], settings: InjectorSettings) -> Pod:
    """A copy of ``pod`` with the sidecar injected when :func:`should_inject` says so, else unchanged."""
    if not should_inject(pod, namespace_labels, settings)[0]:
        return copy.deepcopy(dict(pod))
    return inject(dict(pod), settings)
