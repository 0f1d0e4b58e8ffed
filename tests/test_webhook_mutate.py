"""Table-driven tests of the pure injection logic: decisions, idempotence, what is injected."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest

from sentinel.config import ConfigError, load
from webhook_injector.mutate import (
    ANNOTATION_CPU_LIMIT,
    ANNOTATION_CPU_REQUEST,
    ANNOTATION_INJECT,
    ANNOTATION_MEMORY_LIMIT,
    ANNOTATION_MEMORY_REQUEST,
    ANNOTATION_MODE,
    ANNOTATION_NATIVE_SIDECAR,
    ANNOTATION_SPOOL_HOST_PATH,
    ANNOTATION_SPOOL_PVC,
    ANNOTATION_STATUS,
    NAMESPACE_LABEL,
    SIDECAR_NAME,
    SKIP_REASONS,
    annotation_warnings,
    inject,
    mutate,
    should_inject,
)
from webhook_injector.settings import InjectorSettings

SETTINGS = InjectorSettings(aggregator_url="https://central:9090", image="sentinel:test")
ENABLED = {NAMESPACE_LABEL: "enabled"}


def make_pod(annotations: dict[str, str] | None = None, *, env: list[dict[str, Any]] | None = None,
             **spec: Any) -> dict[str, Any]:
    app: dict[str, Any] = {"name": "app", "image": "app:1"}
    if env is not None:
        app["env"] = env
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "llm-app-", "namespace": "team", "annotations": annotations or {}},
            "spec": {"containers": [app], **spec}}


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    for kind in ("containers", "initContainers"):
        for c in pod["spec"].get(kind, []):
            if c["name"] == name:
                return dict(c)
    raise AssertionError(f"no container {name}")


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {v["name"]: v.get("value", v.get("valueFrom")) for v in c.get("env", [])}


INJECTED = {ANNOTATION_STATUS: "injected", ANNOTATION_INJECT: "true"}


@pytest.mark.parametrize(("pod", "ns_labels", "expected"), [
    (make_pod({ANNOTATION_INJECT: "true"}), {}, (True, "pod_annotation")),
    (make_pod({ANNOTATION_INJECT: "True"}), {}, (True, "pod_annotation")),
    (make_pod(), ENABLED, (True, "namespace_label")),
    (make_pod({ANNOTATION_INJECT: "true"}), ENABLED, (True, "pod_annotation")),
    (make_pod(), {}, (False, "not_requested")),
    (make_pod(), {NAMESPACE_LABEL: "disabled"}, (False, "not_requested")),
    (make_pod({ANNOTATION_INJECT: "false"}), ENABLED, (False, "pod_opt_out")),
    (make_pod({ANNOTATION_INJECT: "yes"}), ENABLED, (False, "invalid_annotation")),
    (make_pod(INJECTED), {}, (False, "already_injected")),
    (inject(make_pod(), SETTINGS), ENABLED, (False, "reinvoked")),  # our own pod again: not a skip
    (make_pod({ANNOTATION_INJECT: "true"}, hostNetwork=True), {}, (False, "host_network")),
    (make_pod({ANNOTATION_INJECT: "false"}, hostNetwork=True), {}, (False, "pod_opt_out")),
    ({"metadata": {}}, {}, (False, "not_requested")),
    ({}, ENABLED, (True, "namespace_label")),
], ids=lambda v: repr(v)[:40])
def test_should_inject(pod: dict[str, Any], ns_labels: dict[str, str], expected: tuple[bool, str]) -> None:
    assert should_inject(pod, ns_labels, SETTINGS) == expected


def test_every_skip_reason_is_reachable() -> None:
    assert set(SKIP_REASONS) == {"not_requested", "pod_opt_out", "invalid_annotation", "already_injected",
                                 "host_network", "port_conflict"}


CASES: list[tuple[str, dict[str, Any], InjectorSettings]] = [
    ("classic", make_pod({ANNOTATION_INJECT: "true"}), SETTINGS),
    ("native-setting", make_pod({ANNOTATION_INJECT: "true"}), InjectorSettings(native_sidecar=True)),
    ("native-annotation", make_pod({ANNOTATION_INJECT: "true", ANNOTATION_NATIVE_SIDECAR: "true"}), SETTINGS),
    ("own-endpoint", make_pod({ANNOTATION_INJECT: "true"}, env=[
        {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://collector:4317"}]), SETTINGS),
    ("store-and-forward-pvc", make_pod({ANNOTATION_INJECT: "true", ANNOTATION_MODE: "store-and-forward",
                                        ANNOTATION_SPOOL_PVC: "spool"}), SETTINGS),
    ("store-and-forward-host-path", make_pod({ANNOTATION_INJECT: "true", ANNOTATION_MODE: "store-and-forward",
                                              ANNOTATION_SPOOL_HOST_PATH: "/var/spool/sentinel"}),
     InjectorSettings(native_sidecar=True)),
    ("http-app", make_pod({ANNOTATION_INJECT: "true", ANNOTATION_CPU_LIMIT: "500m"}, env=[
        {"name": "OTEL_EXPORTER_OTLP_PROTOCOL", "value": "http/protobuf"}]), SETTINGS),
    ("with-init-and-volumes", make_pod({ANNOTATION_INJECT: "true"}, initContainers=[{"name": "migrate",
                                       "image": "m"}], volumes=[{"name": "data", "emptyDir": {}}]),
     InjectorSettings(native_sidecar=True)),
]


@pytest.mark.parametrize(("name", "pod", "settings"), CASES, ids=[c[0] for c in CASES])
def test_mutate_is_pure_and_idempotent(name: str, pod: dict[str, Any], settings: InjectorSettings) -> None:
    before = copy.deepcopy(pod)
    once = mutate(pod, {}, settings)
    assert pod == before, "the input pod must not be modified"
    assert once != pod
    assert mutate(once, {}, settings) == once
    assert inject(once, settings) == once, "injection itself is idempotent, not only guarded by the status"
    assert once["metadata"]["annotations"][ANNOTATION_STATUS] == "injected"
    kubernetes_validate.validate(once, "1.33", strict=True)


def test_skipped_pod_comes_back_unchanged() -> None:
    pod = make_pod()
    assert mutate(pod, {}, SETTINGS) == pod
    assert mutate(pod, {}, SETTINGS) is not pod


@pytest.mark.parametrize(("settings", "annotations", "native"), [
    (SETTINGS, {}, False),
    (InjectorSettings(native_sidecar=True), {}, True),
    (SETTINGS, {ANNOTATION_NATIVE_SIDECAR: "true"}, True),
    (InjectorSettings(native_sidecar=True), {ANNOTATION_NATIVE_SIDECAR: "false"}, False),
    (SETTINGS, {ANNOTATION_NATIVE_SIDECAR: "maybe"}, False),
])
def test_native_or_classic(settings: InjectorSettings, annotations: dict[str, str], native: bool) -> None:
    pod = mutate(make_pod({ANNOTATION_INJECT: "true", **annotations},
                          initContainers=[{"name": "migrate", "image": "m"}]), {}, settings)
    names = [c["name"] for c in pod["spec"]["containers"]]
    init_names = [c["name"] for c in pod["spec"]["initContainers"]]
    sidecar = container(pod, SIDECAR_NAME)
    if native:
        assert init_names == [SIDECAR_NAME, "migrate"] and names == ["app"]
        assert sidecar["restartPolicy"] == "Always"
        assert sidecar["startupProbe"]["httpGet"] == {"path": "/readyz", "port": 8081}
        assert "lifecycle" not in sidecar
    else:
        assert names == ["app", SIDECAR_NAME] and init_names == ["migrate"]
        assert "restartPolicy" not in sidecar
        assert sidecar["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"


def test_switching_mode_moves_the_sidecar() -> None:
    classic = inject(make_pod(), SETTINGS)
    native = inject(classic, InjectorSettings(native_sidecar=True))
    assert [c["name"] for c in native["spec"]["containers"]] == ["app"]
    assert [c["name"] for c in native["spec"]["initContainers"]] == [SIDECAR_NAME]


def test_sidecar_container() -> None:
    sidecar = container(mutate(make_pod({ANNOTATION_INJECT: "true"}), {}, SETTINGS), SIDECAR_NAME)
    assert sidecar["image"] == "sentinel:test"
    assert sidecar["args"] == ["sidecar"]
    assert [p["containerPort"] for p in sidecar["ports"]] == [4317, 4318, 8081]
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8081}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8081}
    assert sidecar["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 65532, "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"}}
    e = env(sidecar)
    assert e["SENTINEL_MODE"] == "sidecar"
    assert e["SENTINEL_AGGREGATOR_URL"] == "https://central:9090"
    assert e["SENTINEL_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert e["SENTINEL_POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert e["SENTINEL_TOKEN"] == {"secretKeyRef": {"name": "sentinel-token", "key": "token", "optional": True}}
    assert e["SENTINEL_GRPC_LISTEN"] == "127.0.0.1:4317"
    assert e["SENTINEL_HTTP_LISTEN"] == "127.0.0.1:4318"
    assert e["SENTINEL_METRICS_LISTEN"] == "0.0.0.0:8081"
    assert e["SENTINEL_SPOOL_DIRECTORY"] == "/var/lib/sentinel/spool"
    assert "SENTINEL_UPSTREAM_URL" not in e
    assert sidecar["volumeMounts"] == [{"name": "sentinel-spool", "mountPath": "/var/lib/sentinel/spool"},
                                       {"name": "sentinel-no-sa-token", "readOnly": True,
                                        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]


def test_no_token_secret_and_no_aggregator() -> None:
    sidecar = container(inject(make_pod(), InjectorSettings(token_secret_name="")), SIDECAR_NAME)
    assert "SENTINEL_TOKEN" not in env(sidecar) and "SENTINEL_AGGREGATOR_URL" not in env(sidecar)


@pytest.mark.parametrize(("app_env", "expected_app", "upstream"), [
    (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, None),
    ([{"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://collector:4317"}],
     {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
     ("http://collector:4317", "grpc")),
    ([{"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "collector.obs:4317"}],
     {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
     ("http://collector.obs:4317", "grpc")),
    ([{"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "https://otlp.vendor.io:4318"},
      {"name": "OTEL_EXPORTER_OTLP_PROTOCOL", "value": "http/protobuf"}],
     {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
     ("https://otlp.vendor.io:4318", "http/protobuf")),
    ([{"name": "OTEL_EXPORTER_OTLP_PROTOCOL", "value": "http/protobuf"}],
     {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
     None),
    ([{"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://collector:4318"}],
     {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
     ("http://collector:4318", "http/protobuf")),
    ([{"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}],
     {"OTEL_EXPORTER_OTLP_ENDPOINT": {"configMapKeyRef": {"name": "c", "key": "k"}},
      "OTEL_EXPORTER_OTLP_PROTOCOL": None}, None),
], ids=["unset", "own-grpc", "no-scheme", "own-http", "http-protocol-only", "port-4318-guess", "valueFrom"])
def test_app_exporter_points_at_sidecar(app_env: list[dict[str, Any]] | None, expected_app: dict[str, Any],
                                        upstream: tuple[str, str] | None) -> None:
    pod = mutate(make_pod({ANNOTATION_INJECT: "true"}, env=app_env), {}, SETTINGS)
    app_vars = env(container(pod, "app"))
    for name, value in expected_app.items():
        assert app_vars.get(name) == value, name
    sidecar_vars = env(container(pod, SIDECAR_NAME))
    if upstream is None:
        assert "SENTINEL_UPSTREAM_URL" not in sidecar_vars
    else:
        assert (sidecar_vars["SENTINEL_UPSTREAM_URL"], sidecar_vars["SENTINEL_UPSTREAM_PROTOCOL"]) == upstream
    # a second pass (reinvocation) keeps the upstream though the app now points at the sidecar
    assert inject(pod, SETTINGS) == pod


def test_every_app_container_is_pointed_at_the_sidecar() -> None:
    pod = make_pod({ANNOTATION_INJECT: "true"})
    pod["spec"]["containers"].append({"name": "worker", "image": "w", "env": [
        {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://collector:4317"}]})
    out = mutate(pod, {}, SETTINGS)
    for name in ("app", "worker"):
        assert env(container(out, name))["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://localhost:4317"
    assert env(container(out, SIDECAR_NAME))["SENTINEL_UPSTREAM_URL"] == "http://collector:4317"


@pytest.mark.parametrize(("annotations", "expected"), [
    ({}, {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "200m", "memory": "256Mi"}}),
    ({ANNOTATION_CPU_REQUEST: "250m", ANNOTATION_MEMORY_REQUEST: "64Mi", ANNOTATION_CPU_LIMIT: "1",
      ANNOTATION_MEMORY_LIMIT: "1Gi"},
     {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}),
    ({ANNOTATION_MEMORY_LIMIT: "lots"},
     {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "200m", "memory": "256Mi"}}),
])
def test_resources(annotations: dict[str, str], expected: dict[str, dict[str, str]]) -> None:
    pod = mutate(make_pod({ANNOTATION_INJECT: "true", **annotations}), {}, SETTINGS)
    assert container(pod, SIDECAR_NAME)["resources"] == expected


@pytest.mark.parametrize(("annotations", "settings", "volume", "mode"), [
    ({}, SETTINGS, {"emptyDir": {"sizeLimit": "512Mi"}}, "sidecar"),
    ({}, InjectorSettings(spool_size_limit="1Gi"), {"emptyDir": {"sizeLimit": "1Gi"}}, "sidecar"),
    ({ANNOTATION_MODE: "store-and-forward"}, SETTINGS, {"emptyDir": {"sizeLimit": "512Mi"}}, "store-and-forward"),
    ({ANNOTATION_MODE: "store-and-forward", ANNOTATION_SPOOL_PVC: "llm-spool"}, SETTINGS,
     {"persistentVolumeClaim": {"claimName": "llm-spool"}}, "store-and-forward"),
    ({ANNOTATION_MODE: "store-and-forward", ANNOTATION_SPOOL_HOST_PATH: "/var/spool/sentinel"}, SETTINGS,
     {"hostPath": {"path": "/var/spool/sentinel", "type": "DirectoryOrCreate"}}, "store-and-forward"),
    ({ANNOTATION_SPOOL_PVC: "ignored-in-sidecar-mode"}, SETTINGS, {"emptyDir": {"sizeLimit": "512Mi"}}, "sidecar"),
    ({}, InjectorSettings(mode="store-and-forward"), {"emptyDir": {"sizeLimit": "512Mi"}}, "store-and-forward"),
    ({ANNOTATION_MODE: "bogus"}, SETTINGS, {"emptyDir": {"sizeLimit": "512Mi"}}, "sidecar"),
])
def test_spool_volume_and_mode(annotations: dict[str, str], settings: InjectorSettings, volume: dict[str, Any],
                               mode: str) -> None:
    pod = make_pod({ANNOTATION_INJECT: "true", **annotations}, volumes=[{"name": "data", "emptyDir": {}}])
    out = mutate(pod, {}, settings)
    assert out["spec"]["volumes"] == [{"name": "data", "emptyDir": {}}, {"name": "sentinel-spool", **volume},
                                      {"name": "sentinel-no-sa-token", "emptyDir": {"sizeLimit": "1Ki"}}]
    assert env(container(out, SIDECAR_NAME))["SENTINEL_MODE"] == mode


@pytest.mark.parametrize(("annotations", "fragment"), [
    ({ANNOTATION_INJECT: "yes"}, ANNOTATION_INJECT),
    ({ANNOTATION_NATIVE_SIDECAR: "1"}, ANNOTATION_NATIVE_SIDECAR),
    ({ANNOTATION_MODE: "edge"}, ANNOTATION_MODE),
    ({ANNOTATION_CPU_LIMIT: "two"}, ANNOTATION_CPU_LIMIT),
])
def test_ignored_annotations_are_warned(annotations: dict[str, str], fragment: str) -> None:
    warnings = annotation_warnings(make_pod(annotations), SETTINGS)
    assert len(warnings) == 1 and warnings[0].startswith(fragment)
    assert annotation_warnings(make_pod({ANNOTATION_INJECT: "true"}), SETTINGS) == []


@pytest.mark.parametrize(("values", "key"), [
    ({"listen": "8443"}, "listen"),
    ({"tls_cert": "/c.pem"}, "tls_cert"),
    ({"mode": "edge"}, "mode"),
    ({"aggregator_url": "central:9090"}, "aggregator_url"),
    ({"cpu_limit": "two"}, "cpu_limit"),
    ({"spool_size_limit": "big"}, "spool_size_limit"),
    ({"image_pull_policy": "Sometimes"}, "image_pull_policy"),
    ({"run_as_user": "0"}, "run_as_user"),
    ({"token_secret_key": ""}, "token_secret_key"),
    ({"spool_mount_path": "spool"}, "spool_mount_path"),
    ({"native_sidecar": "perhaps"}, "native_sidecar"),
])
def test_invalid_settings_name_the_key(values: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}"):
        load(InjectorSettings, args=values, env={})


def test_settings_defaults() -> None:
    s = load(InjectorSettings, args={}, env={"SENTINEL_NATIVE_SIDECAR": "true"})
    assert (s.listen, s.native_sidecar, s.cpu_request, s.memory_request, s.cpu_limit, s.memory_limit) == (
        "0.0.0.0:8443", True, "100m", "128Mi", "200m", "256Mi")


def test_injected_pods_carry_the_label_the_network_policy_selects() -> None:
    from webhook_injector.mutate import LABEL_INJECTED, mutate
    from webhook_injector.settings import InjectorSettings

    pod = {"metadata": {"name": "app", "labels": {"app": "chat"},
                        "annotations": {"sentinel.llm-devops.io/inject": "true"}},
           "spec": {"containers": [{"name": "app", "image": "app:1"}]}}
    out = mutate(pod, {}, InjectorSettings())
    assert out["metadata"]["labels"] == {"app": "chat", LABEL_INJECTED: "true"}
    assert mutate(out, {}, InjectorSettings()) == out


def test_a_pod_injected_before_upstream_was_a_section_keeps_its_upstream() -> None:
    # Injected by an older injector: the sidecar carries SENTINEL_UPSTREAM (now upstream.url, deprecated)
    # and SENTINEL_SPOOL_DIR (now spool.directory); both spellings at once would stop the sidecar.
    pod = mutate(make_pod({ANNOTATION_INJECT: "true"}, env=[
        {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://collector:4317"}]), {}, SETTINGS)
    old = {"SENTINEL_UPSTREAM_URL": "SENTINEL_UPSTREAM", "SENTINEL_SPOOL_DIRECTORY": "SENTINEL_SPOOL_DIR"}
    for item in container(pod, SIDECAR_NAME)["env"]:
        item["name"] = old.get(item["name"], item["name"])
    again = env(container(inject(pod, SETTINGS), SIDECAR_NAME))
    assert again["SENTINEL_UPSTREAM_URL"] == "http://collector:4317" and "SENTINEL_UPSTREAM" not in again
    assert again["SENTINEL_SPOOL_DIRECTORY"] == SETTINGS.spool_mount_path and "SENTINEL_SPOOL_DIR" not in again
