"""Offline checks of the kustomize manifests in deploy/ (Kubernetes schemas, Istio CRD schemas, policy).

- Plain Kubernetes kinds are validated with ``kubernetes-validate`` (strict: unknown fields fail)
  against the schemas of one Kubernetes version it ships.
- Istio kinds are validated with ``jsonschema`` against the CRDs' OpenAPI v3 schemas in
  ``testdata/k8s/istio-crds-used.yaml`` (the CRDs of the kinds deploy/istio uses), plus a
  walk that rejects fields the schema does not declare (the API server would prune them silently).
  CEL rules (``x-kubernetes-validations``) are not evaluated.
- cert-manager kinds have no schema here; they get a structural check.
- Policy: restricted pod security on every container, the webhook fails open and skips
  kube-system, RBAC has no wildcards, every kustomization lists every manifest beside it, and the
  aggregator's own settings loader accepts its ConfigMap, environment and arguments.
- The aggregator's alerting: every SENTINEL_* variable it gets is an AggregatorConfig setting, the
  Secret holds ingest and viewer/operator/admin tokens (so it serves beyond 127.0.0.1 and its API
  has readers), the RabbitMQ URL is an optional Secret reference, the Services expose 9090
  (``http-``) and 9091 (``grpc-``), and the NetworkPolicy and Istio AuthorizationPolicy admit both
  ports, the API, the page and the gRPC AlertService, and nothing else.
- If ``kubectl`` is on PATH, ``kubectl kustomize`` builds every entry point.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from webhook_injector.settings import InjectorSettings

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
ISTIO_CRDS = REPO / "testdata" / "k8s" / "istio-crds-used.yaml"
K8S_VERSION = "1.30.0"
NAMESPACE = "llm-sentinel"
IMAGE = "ghcr.io/llm-devops/llm-sentinel:0.1.0"
ISTIO_GROUPS = ("istio.io",)          # networking.istio.io, security.istio.io, ...
CERT_MANAGER_GROUP = "cert-manager.io"
MONITORING_GROUP = "monitoring.coreos.com"  # Prometheus Operator kinds: tests/test_monitoring.py
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
RBAC_KINDS = {"Role", "ClusterRole"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration",
                  "ValidatingWebhookConfiguration", "CustomResourceDefinition"}


# --- loading ---------------------------------------------------------------------------------

def _kustomizations() -> list[Path]:
    return sorted(DEPLOY.rglob("kustomization.yaml"))


def _load(path: Path) -> dict[str, Any]:
    with path.open() as f:
        data = yaml.safe_load(f)
    assert isinstance(data, dict), path
    return data


def _patch_files() -> set[Path]:
    """Files used as kustomize patches: partial objects, not validated as whole manifests."""
    out = set()
    for kpath in _kustomizations():
        for p in _load(kpath).get("patches") or []:
            if "path" in p:
                out.add((kpath.parent / p["path"]).resolve())
    return out


def _manifest_files() -> list[Path]:
    patches = _patch_files()
    return sorted(p for p in DEPLOY.rglob("*.yaml")
                  if p.name != "kustomization.yaml" and p.resolve() not in patches)


MANIFESTS = _manifest_files()


@cache
def _docs(path: Path) -> tuple[dict[str, Any], ...]:
    with path.open() as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    for d in docs:
        assert isinstance(d, dict) and "apiVersion" in d and "kind" in d, f"{path}: not an object"
    return tuple(docs)


def _all_docs() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in MANIFESTS:
        for doc in _docs(path):
            yield path, doc


def _group(doc: dict[str, Any]) -> str:
    api = str(doc["apiVersion"])
    return api.split("/")[0] if "/" in api else ""


def _is_istio(doc: dict[str, Any]) -> bool:
    return _group(doc).endswith(ISTIO_GROUPS)


def _rel(path: Path) -> str:
    return str(path.relative_to(DEPLOY))


def _by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in _all_docs() if d["kind"] == kind]


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _by_kind(kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for _, d in _all_docs():
        if d["kind"] in POD_TEMPLATE_KINDS:
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]
        elif d["kind"] == "CronJob":
            yield f"CronJob/{d['metadata']['name']}", d["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            yield f"Pod/{d['metadata']['name']}", d["spec"]


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod.get("initContainers") or []) + list(pod.get("containers") or [])


# --- schema validation -----------------------------------------------------------------------

def test_manifests_found() -> None:
    assert len(MANIFESTS) >= 10
    assert any(p.parent.name == "istio" for p in MANIFESTS)
    kinds = {d["kind"] for _, d in _all_docs()}
    for kind in ("Namespace", "StatefulSet", "Deployment", "Service", "ConfigMap", "Secret",
                 "PodDisruptionBudget", "NetworkPolicy", "ServiceAccount", "MutatingWebhookConfiguration",
                 "Issuer", "Certificate", "PeerAuthentication", "AuthorizationPolicy", "DestinationRule"):
        assert kind in kinds, kind


@pytest.mark.parametrize("path", MANIFESTS, ids=_rel)
def test_kubernetes_schema(path: Path) -> None:
    """Every non-CRD object validates (strictly) against the Kubernetes OpenAPI schema."""
    for doc in _docs(path):
        if _is_istio(doc):
            continue                                     # test_istio_schema
        if _group(doc) == CERT_MANAGER_GROUP:
            _check_cert_manager(doc)
            continue
        if _group(doc) == MONITORING_GROUP:
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{_rel(path)} {doc['kind']}/{doc['metadata'].get('name')}: "
                        f"{'.'.join(map(str, e.path))}: {e.message}")


def _check_cert_manager(doc: dict[str, Any]) -> None:
    """No cert-manager schemas offline: the fields the webhook set-up relies on, by hand."""
    assert doc["apiVersion"] == "cert-manager.io/v1"
    spec = doc["spec"]
    if doc["kind"] == "Issuer":
        kinds = {"selfSigned", "ca", "acme", "vault", "venafi"} & set(spec)
        assert len(kinds) == 1, f"Issuer {doc['metadata']['name']}: exactly one issuer type"
        if "ca" in spec:
            assert spec["ca"]["secretName"]
    elif doc["kind"] == "Certificate":
        assert spec["secretName"] and spec["issuerRef"]["name"]
        assert spec.get("dnsNames") or spec.get("commonName")
        assert set(spec) <= {"secretName", "issuerRef", "dnsNames", "commonName", "isCA", "duration",
                             "renewBefore", "usages", "privateKey", "subject", "ipAddresses",
                             "secretTemplate", "uris", "emailAddresses", "keystores",
                             "revisionHistoryLimit"}, set(spec)
        issuers = {d["metadata"]["name"] for d in _by_kind("Issuer")}
        assert spec["issuerRef"]["name"] in issuers
    else:
        pytest.fail(f"unexpected cert-manager kind {doc['kind']}")


@cache
def _istio_schemas() -> dict[tuple[str, str, str], dict[str, Any]]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)      # the CRD file is large: libyaml if present
    with ISTIO_CRDS.open() as f:
        crds = [d for d in yaml.load_all(f, Loader=loader) if d and d.get("kind") == "CustomResourceDefinition"]
    out = {}
    for crd in crds:
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            if v.get("served", True) and "schema" in v:
                out[(group, v["name"], kind)] = v["schema"]["openAPIV3Schema"]
    return out


def _undeclared(obj: Any, schema: dict[str, Any], where: str) -> list[str]:
    """Fields present in ``obj`` that ``schema`` does not declare (structural pruning would drop them)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    out: list[str] = []
    if isinstance(obj, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, value in obj.items():
            if props is not None and key in props:
                out += _undeclared(value, props[key], f"{where}.{key}")
            elif isinstance(extra, dict):
                out += _undeclared(value, extra, f"{where}.{key}")
            elif props is not None and not (where == "" and key in ("apiVersion", "kind", "metadata")):
                out.append(f"{where}.{key}")
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(obj):
            out += _undeclared(item, schema["items"], f"{where}[{i}]")
    return out


ISTIO_MANIFESTS = [p for p in MANIFESTS if any(_is_istio(d) for d in _docs(p))]


@pytest.mark.parametrize("path", ISTIO_MANIFESTS, ids=_rel)
def test_istio_schema(path: Path) -> None:
    schemas = _istio_schemas()
    for doc in _docs(path):
        if not _is_istio(doc):
            continue
        group, version = doc["apiVersion"].split("/")
        key = (group, version, doc["kind"])
        assert key in schemas, f"no Istio CRD schema for {key}"
        schema = schemas[key]
        errors = [f"{'.'.join(map(str, e.path))}: {e.message}"
                  for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
        errors += [f"{f}: not declared by the CRD" for f in _undeclared(doc, schema, "")]
        assert not errors, f"{_rel(path)} {doc['kind']}/{doc['metadata']['name']}: {errors}"


def test_istio_check_catches_mistakes() -> None:
    """The Istio validation is not vacuous: a wrong enum and a misspelt field are both caught."""
    schema = _istio_schemas()[("security.istio.io", "v1", "PeerAuthentication")]
    bad_enum = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                "metadata": {"name": "x"}, "spec": {"mtls": {"mode": "STRICTER"}}}
    assert list(jsonschema.Draft7Validator(schema).iter_errors(bad_enum))
    misspelt = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                "metadata": {"name": "x"}, "spec": {"mTLS": {"mode": "STRICT"}}}
    assert _undeclared(misspelt, schema, "") == [".spec.mTLS"]


# --- pod security ----------------------------------------------------------------------------

def test_every_container_is_restricted() -> None:
    pods = list(_pod_specs())
    assert len(pods) >= 2
    for name, pod in pods:
        psc = pod.get("securityContext") or {}
        assert not (pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC")), name
        assert not any("hostPath" in v for v in pod.get("volumes") or []), name
        for c in _containers(pod):
            where = f"{name} container {c['name']}"
            sc = c.get("securityContext") or {}
            assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", psc.get("runAsUser", 1)) != 0, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert not sc.get("privileged"), where
            assert "ALL" in (sc.get("capabilities") or {}).get("drop", []), where
            assert not (sc.get("capabilities") or {}).get("add"), where
            seccomp = sc.get("seccompProfile", psc.get("seccompProfile")) or {}
            assert seccomp.get("type") == "RuntimeDefault", where
            res = c.get("resources") or {}
            assert {"cpu", "memory"} <= set(res.get("requests", {})), where
            assert {"cpu", "memory"} <= set(res.get("limits", {})), where
            if not name.startswith("Deployment/chatbot"):  # the example app brings its own image
                assert c["image"] == IMAGE, where


def test_namespace_enforces_restricted() -> None:
    ns = _one("Namespace", NAMESPACE)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for path, d in _all_docs():
        if d["kind"] not in CLUSTER_SCOPED:
            # The example app lives in its own team's namespace, like any app would.
            expected = "team-a" if _rel(path).startswith("k8s/example/") else NAMESPACE
            assert d["metadata"].get("namespace") == expected, f"{_rel(path)} {d['kind']}"
    assert _one("Namespace", "team-a")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# --- aggregator --------------------------------------------------------------------------------

ROLE_TOKEN_KEYS = ("SENTINEL_VIEWER_TOKENS", "SENTINEL_OPERATOR_TOKENS", "SENTINEL_ADMIN_TOKENS")


def _aggregator() -> dict[str, Any]:
    return _one("StatefulSet", "sentinel-aggregator")


def _aggregator_container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = _aggregator()["spec"]["template"]["spec"]["containers"]
    (c,) = containers
    return c


def _secret_data(secret: dict[str, Any]) -> dict[str, str]:
    import base64

    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    return data | (secret.get("stringData") or {})


def _secret_refs(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Env var name -> its secretKeyRef, for the container's env entries taken from Secrets."""
    return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c.get("env", [])
            if "secretKeyRef" in (e.get("valueFrom") or {})}


def _aggregator_env_names(c: dict[str, Any]) -> set[str]:
    """Every environment variable the container gets: env entries and the keys of envFrom sources."""
    names = {e["name"] for e in c.get("env", [])}
    for ref in c.get("envFrom", []):
        prefix = ref.get("prefix", "")
        if "configMapRef" in ref:
            names |= {prefix + k for k in _one("ConfigMap", ref["configMapRef"]["name"])["data"]}
        if "secretRef" in ref:
            names |= {prefix + k for k in _secret_data(_one("Secret", ref["secretRef"]["name"]))}
    return names


def test_aggregator_statefulset() -> None:
    sts = _aggregator()
    assert sts["spec"]["replicas"] == 1
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["sentinel"] and c["args"][0] == "aggregator"
    args = c["args"]
    data_dir = args[args.index("--data-dir") + 1]
    assert data_dir == "/var/lib/sentinel"
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts[data_dir] in claims
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert sorted(ports.values()) == [9090, 9091]
    assert ports["http"] == 9090
    (grpc_name,) = [n for n, p in ports.items() if p == 9091]
    assert grpc_name.startswith("grpc")
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["readinessProbe"]["httpGet"]["port"] in ("http", 9090)
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # references resolve
    for ref in c.get("envFrom", []):
        _one("ConfigMap", ref["configMapRef"]["name"])
    refs = _secret_refs(c)
    assert set(refs) >= {"SENTINEL_TOKENS", *ROLE_TOKEN_KEYS, "SENTINEL_AMQP_URL"}
    for name, ref in refs.items():
        if ref.get("optional"):
            continue                     # may be absent (the RabbitMQ URL is created out of band)
        assert ref["key"] in _secret_data(_one("Secret", ref["name"])), name
    # No broker by default: the RabbitMQ URL is optional and not shipped, so the pod starts without it.
    amqp = refs["SENTINEL_AMQP_URL"]
    assert amqp["optional"] is True
    assert not [d for d in _by_kind("Secret") if d["metadata"]["name"] == amqp["name"]
                and amqp["key"] in _secret_data(d)]
    for vol in pod["volumes"]:
        if "configMap" in vol:
            _one("ConfigMap", vol["configMap"]["name"])
    _one("Service", sts["spec"]["serviceName"])
    labels = sts["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        for d in _by_kind(kind):
            sel = d["spec"]["selector"]
            sel = sel.get("matchLabels", sel)
            if sel.get("app.kubernetes.io/name") == "sentinel-aggregator":
                assert sel.items() <= labels.items()


def test_aggregator_settings_load(tmp_path: Path) -> None:
    """The aggregator's own loader accepts the ConfigMap's YAML, the environment and the arguments."""
    from aggregator.config import AggregatorConfig
    from sentinel.cli import _parser
    from sentinel.config import load

    c = _aggregator()["spec"]["template"]["spec"]["containers"][0]
    args = _parser().parse_args(c["args"])
    cfg_path = args.config
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == str(Path(cfg_path).parent)]
    (vol,) = [v for v in _aggregator()["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    cm = _one("ConfigMap", vol["configMap"]["name"])
    local = tmp_path / Path(cfg_path).name
    local.write_text(cm["data"][Path(cfg_path).name])
    env: dict[str, str] = {}
    for ref in c.get("envFrom", []):
        env.update(_one("ConfigMap", ref["configMapRef"]["name"])["data"])
    for name, ref in _secret_refs(c).items():
        if not ref.get("optional"):
            env[name] = _secret_data(_one("Secret", ref["name"]))[ref["key"]]
    args.config = str(local)
    cfg = load(AggregatorConfig, args=args, env=env, config_file=local, section="aggregator")
    cfg.validate()
    assert cfg.data_dir == "/var/lib/sentinel"
    ports = {p["containerPort"] for p in c["ports"]}
    assert cfg.listen.endswith(":9090") and cfg.listen.startswith("0.0.0.0:")
    assert cfg.grpc_listen.startswith("0.0.0.0:") and int(cfg.grpc_listen.rpartition(":")[2]) in ports
    assert len(cfg.tokens) == 2
    # Tokens of every kind: with any configured the aggregator keeps 0.0.0.0 (with none it would bind
    # 127.0.0.1 only), and the API, the stream and gRPC have tokens that may read them.
    assert cfg.auth_enabled and not cfg.allow_unauthenticated
    assert cfg.viewer_tokens and cfg.operator_tokens and cfg.admin_tokens
    everything = cfg.tokens + cfg.viewer_tokens + cfg.operator_tokens + cfg.admin_tokens
    assert len(set(everything)) == len(everything), "a token in two roles"
    assert cfg.amqp.url == ""                           # no broker unless the optional Secret exists
    assert cfg.amqp.exchange == "incidents" and cfg.amqp.queue == "incidents.all"
    # With the optional Secret, its URL is accepted (the aggregator builds its RabbitMQ sink).
    env["SENTINEL_AMQP_URL"] = "amqps://sentinel:pw@rabbitmq.messaging.svc.cluster.local:5671/%2F"
    with_broker = load(AggregatorConfig, args=args, env=env, config_file=local, section="aggregator")
    with_broker.validate()
    assert with_broker.amqp.url.startswith("amqps://")


def test_aggregator_env_names_are_settings() -> None:
    """Every SENTINEL_* variable the aggregator container gets names a real AggregatorConfig setting."""
    from aggregator.config import AggregatorConfig
    from sentinel.config import ENV_PREFIX, leaves

    settings = {leaf.env for leaf in leaves(AggregatorConfig)}
    names = _aggregator_env_names(_aggregator_container())
    assert {"SENTINEL_TOKENS", *ROLE_TOKEN_KEYS, "SENTINEL_AMQP_URL"} <= names
    sentinel = {n for n in names if n.startswith(ENV_PREFIX)}
    assert sentinel - settings == set(), "not aggregator settings"
    # The Secret's keys are env names too (someone may switch to envFrom: secretRef).
    for key in _secret_data(_one("Secret", "sentinel-aggregator-tokens")):
        assert key in settings, key


def test_aggregator_secret_has_role_tokens() -> None:
    secret = _one("Secret", "sentinel-aggregator-tokens")
    data = _secret_data(secret)
    for key in ("SENTINEL_TOKENS", *ROLE_TOKEN_KEYS):
        assert [t for t in data.get(key, "").split(",") if t.strip()], f"{key}: missing or empty"
    # The generation command in the file's header covers every key.
    header = (DEPLOY / "k8s" / "aggregator-secret.yaml").read_text().split("apiVersion:")[0]
    for key in ("SENTINEL_TOKENS", *ROLE_TOKEN_KEYS):
        assert f"--from-literal={key}=" in header, key


def test_aggregator_service_ports() -> None:
    """9090 (HTTP) and 9091 (gRPC) with protocol-prefixed names, as Istio's protocol selection wants."""
    c = _aggregator_container()
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    for name in ("sentinel-aggregator", "sentinel-aggregator-headless"):
        svc = _one("Service", name)
        ports = {p["port"]: p for p in svc["spec"]["ports"]}
        assert set(ports) == {9090, 9091}, name
        assert ports[9090]["name"].split("-")[0] == "http", name
        assert ports[9091]["name"].startswith("grpc-"), name
        assert ports[9091].get("appProtocol", "grpc") == "grpc", name
        for port, p in ports.items():
            target = p.get("targetPort", port)
            assert named.get(target, target) == port, f"{name}: {p['name']} targets {target}"


def test_dockerfile_exposes_aggregator_ports() -> None:
    text = (REPO / "Dockerfile").read_text()
    exposed = {int(p) for line in text.splitlines() if line.startswith("EXPOSE") for p in line.split()[1:]}
    assert {p["containerPort"] for p in _aggregator_container()["ports"]} <= exposed


def test_aggregator_networkpolicy_only_its_ports() -> None:
    (np,) = [d for d in _by_kind("NetworkPolicy")
             if d["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/name") == "sentinel-aggregator"]
    assert np["spec"]["policyTypes"] == ["Ingress"]
    allowed: set[int] = set()
    for rule in np["spec"]["ingress"]:
        assert rule["from"], "an ingress rule without 'from' admits everyone"
        assert rule.get("ports"), "an ingress rule without 'ports' admits every port"
        ports = {p["port"] for p in rule["ports"]}
        assert ports <= {9090, 9091}
        allowed |= ports
        if 9091 in ports:                # gRPC clients can use the REST API too, never only gRPC
            assert 9090 in ports
    assert allowed == {9090, 9091}


def _aggregator_authz() -> dict[str, Any]:
    (ap,) = [d for d in _by_kind("AuthorizationPolicy")
             if d["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/name") == "sentinel-aggregator"]
    return ap


def test_istio_authorization_policy() -> None:
    """Every rule names its callers and ports; ingest, the API, the page and gRPC are each allowed."""
    ap = _aggregator_authz()
    assert ap["spec"]["action"] == "ALLOW"
    allowed: set[tuple[str, str, str]] = set()
    for rule in ap["spec"]["rules"]:
        assert rule.get("from"), "a rule without 'from' allows every caller"
        for to in rule["to"]:
            op = to["operation"]
            assert op.get("ports") and op.get("methods") and op.get("paths"), op
            allowed |= {(port, m, path) for port in op["ports"] for m in op["methods"] for path in op["paths"]}
    assert {port for port, _, _ in allowed} == {"9090", "9091"}
    assert ("9090", "POST", "/v1/ingest") in allowed
    for needed in (("9090", "GET", "/api/*"), ("9090", "GET", "/"), ("9090", "GET", "/static/*"),
                   ("9090", "GET", "/metrics"), ("9090", "POST", "/api/v1/alerts/*"),
                   ("9090", "POST", "/api/v1/silences"), ("9090", "DELETE", "/api/v1/silences/*"),
                   ("9091", "POST", "/sentinel.v1.AlertService/*")):
        assert needed in allowed, needed
    # Port 9091 serves only the AlertService (gRPC: HTTP/2 POST /<package>.<Service>/<Method>).
    assert {(m, p) for port, m, p in allowed if port == "9091"} == {("POST", "/sentinel.v1.AlertService/*")}
    from aggregator.alerting.grpc_service import SERVICE

    assert SERVICE == "sentinel.v1.AlertService"
    # Ports are the workload's: the aggregator container's.
    container = {str(p["containerPort"]) for p in _aggregator_container()["ports"]}
    assert {port for port, _, _ in allowed} <= container


# --- webhook -----------------------------------------------------------------------------------

def test_webhook_configuration() -> None:
    (mwc,) = _by_kind("MutatingWebhookConfiguration")
    assert sorted(h["clientConfig"]["service"]["path"] for h in mwc["webhooks"]) == [
        "/mutate", "/mutate/namespace-enabled"]
    for hook in mwc["webhooks"]:
        assert hook["failurePolicy"] == "Ignore"
        assert hook["sideEffects"] == "None"
        assert hook["reinvocationPolicy"] == "IfNeeded"
        assert hook["timeoutSeconds"] <= 5
        assert hook["admissionReviewVersions"] == ["v1"]
        excluded = {v for e in hook["namespaceSelector"]["matchExpressions"]
                    if e["key"] == "kubernetes.io/metadata.name" and e["operator"] == "NotIn"
                    for v in e["values"]}
        assert {"kube-system", NAMESPACE} <= excluded
        svc_ref = hook["clientConfig"]["service"]
        labelled = [e for e in hook["namespaceSelector"]["matchExpressions"]
                    if e["key"] == "sentinel.llm-devops.io/inject"]
        # Labelled namespaces go to the path that means "the namespace opted in"; the rest to /mutate.
        assert len(labelled) == 1 and labelled[0]["values"] == ["enabled"]
        expected_path = "/mutate/namespace-enabled" if labelled[0]["operator"] == "In" else "/mutate"
        assert svc_ref["path"] == expected_path and svc_ref["namespace"] == NAMESPACE
        svc = _one("Service", svc_ref["name"])
        (port,) = [p for p in svc["spec"]["ports"] if p["port"] == svc_ref.get("port", 443)]
        dep = _one("Deployment", "sentinel-webhook")
        c = dep["spec"]["template"]["spec"]["containers"][0]
        named = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert named.get(port["targetPort"], port["targetPort"]) == 8443
    ns, name = mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].split("/")
    cert = _one("Certificate", name)
    assert ns == NAMESPACE
    assert f"{svc_ref['name']}.{NAMESPACE}.svc" in cert["spec"]["dnsNames"]


def test_webhook_deployment() -> None:
    dep = _one("Deployment", "sentinel-webhook")
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "sentinel-webhook"
    assert pod["automountServiceAccountToken"] is False       # cert-manager mode: no API access
    (c,) = pod["containers"]
    assert c["args"] == ["webhook", "--listen", "0.0.0.0:8443", "--tls-cert", "/tls/tls.crt",
                         "--tls-key", "/tls/tls.key"]
    (tls,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert tls["secret"]["secretName"] == _one("Certificate", "sentinel-webhook")["spec"]["secretName"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["SENTINEL_IMAGE"] == IMAGE                      # kustomize `images:` does not touch env
    assert dep["spec"]["template"]["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    fields = set(InjectorSettings.__dataclass_fields__)
    for key in env:
        assert key.removeprefix("SENTINEL_").lower() in fields, key
    # The webhook's own loader accepts the arguments and the environment.
    from sentinel.cli import _parser
    from sentinel.config import load

    try:
        args = _parser().parse_args(c["args"])
    except SystemExit:
        pytest.fail(f"`sentinel webhook` refuses the Deployment's arguments {c['args']}")
    loaded = load(InjectorSettings, args=args, env={k: v for k, v in env.items() if v is not None},
                  section="webhook")
    assert loaded.listen == "0.0.0.0:8443" and loaded.image == IMAGE


# --- RBAC --------------------------------------------------------------------------------------

def test_rbac_least_privilege() -> None:
    roles = [(p, d) for p, d in _all_docs() if d["kind"] in RBAC_KINDS]
    for path, role in roles:
        for rule in role.get("rules", []):
            for field in ("verbs", "resources", "apiGroups", "resourceNames"):
                assert "*" not in rule.get(field, []), f"{_rel(path)}: wildcard {field}"
            assert not any("*" in r for r in rule.get("resources", [])), _rel(path)
            assert set(rule["verbs"]) <= {"get", "patch"}, _rel(path)
            assert rule.get("resourceNames"), f"{_rel(path)}: not limited to named objects"
        if role["kind"] == "ClusterRole":
            assert path.parent.name == "self-signed", "cluster-wide RBAC only in --self-signed mode"
    top = [d for p, d in _all_docs() if p.parent == DEPLOY / "k8s"]
    assert not [d for d in top if d["kind"] in RBAC_KINDS | {"RoleBinding", "ClusterRoleBinding"}], \
        "cert-manager mode needs no RBAC"


# --- kustomize ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kpath", _kustomizations(), ids=lambda p: _rel(p.parent))
def test_kustomization_lists_every_manifest(kpath: Path) -> None:
    k = _load(kpath)
    listed: set[Path] = set()
    for entry in k.get("resources", []) + [p["path"] for p in k.get("patches", []) if "path" in p]:
        target = (kpath.parent / entry).resolve()
        assert target.exists(), f"{_rel(kpath)}: {entry} does not exist"
        if target.is_dir():
            assert (target / "kustomization.yaml").exists(), entry
        else:
            listed.add(target)
    present = {p.resolve() for p in kpath.parent.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert present - listed == set(), f"{_rel(kpath)} does not list {sorted(present - listed)}"


KUBECTL = shutil.which("kubectl")


def _kustomize(path: Path) -> list[dict[str, Any]]:
    assert KUBECTL
    out = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.mark.skipif(KUBECTL is None, reason="needs kubectl >= 1.27 on PATH (its built-in kustomize v5); "
                                        "install it from the Kubernetes release packages")
def test_kustomize_builds(tmp_path: Path) -> None:
    base = {(d["kind"], d["metadata"]["name"]) for d in _kustomize(DEPLOY / "k8s")}
    assert ("MutatingWebhookConfiguration", "sentinel-webhook") in base
    assert ("Certificate", "sentinel-webhook") in base
    mesh = _kustomize(DEPLOY / "istio")
    assert base <= {(d["kind"], d["metadata"]["name"]) for d in mesh}
    (ns,) = [d for d in mesh if d["kind"] == "Namespace"]
    assert ns["metadata"]["labels"]["istio-injection"] == "enabled"
    # The --self-signed component (commented out in deploy/k8s/kustomization.yaml), switched on.
    copy = tmp_path / "k8s"
    shutil.copytree(DEPLOY / "k8s", copy)
    kfile = copy / "kustomization.yaml"
    text = kfile.read_text()
    assert "# components:\n#   - self-signed\n" in text
    kfile.write_text(text.replace("# components:\n#   - self-signed\n", "components:\n  - self-signed\n"))
    built = _kustomize(copy)
    kinds = {d["kind"] for d in built}
    assert not kinds & {"Issuer", "Certificate"}
    assert {"ClusterRole", "ClusterRoleBinding"} <= kinds
    (mwc,) = [d for d in built if d["kind"] == "MutatingWebhookConfiguration"]
    assert "cert-manager.io/inject-ca-from" not in (mwc["metadata"].get("annotations") or {})
    (dep,) = [d for d in built if d["kind"] == "Deployment"]
    pod = dep["spec"]["template"]["spec"]
    assert "--self-signed" in pod["containers"][0]["args"]
    assert pod["automountServiceAccountToken"] is True
    assert "tls" not in {v["name"] for v in pod["volumes"]}
    for d in built:
        if d["kind"] not in {"Issuer", "Certificate"}:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)


CLUSTER = DEPLOY / "k8s" / "cluster"


def test_cluster_component_env_names_are_settings() -> None:
    """The cluster component's patch gives the aggregator settings only, the broker and store URLs from Secrets."""
    from aggregator.config import AggregatorConfig
    from sentinel.config import leaves

    settings = {leaf.env for leaf in leaves(AggregatorConfig)}  # SENTINEL_CLUSTER_AMQP_URL: cluster.amqp_url
    (c,) = _load(CLUSTER / "patch-aggregator-cluster.yaml")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["valueFrom"] for e in c["env"]}
    assert set(env) <= settings
    assert env["SENTINEL_CLUSTER_AMQP_URL"]["secretKeyRef"]["name"] == "sentinel-aggregator-cluster"
    assert env["SENTINEL_STORE_URL"]["secretKeyRef"]["optional"] is False  # cluster mode needs both
    assert env["SENTINEL_CLUSTER_REPLICA_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}


@pytest.mark.skipif(KUBECTL is None, reason="needs kubectl >= 1.27 on PATH (its built-in kustomize v5)")
def test_cluster_component_builds(tmp_path: Path) -> None:
    """deploy/k8s with the cluster component: 3 replicas on different nodes, PDB, HPA; every object valid."""
    from aggregator.config import AggregatorConfig
    from sentinel.config import load

    copy = tmp_path / "k8s"
    shutil.copytree(DEPLOY / "k8s", copy)
    kfile = copy / "kustomization.yaml"
    kfile.write_text(kfile.read_text() + "components:\n  - cluster\n")
    built = _kustomize(copy)
    for d in built:
        if _group(d) != CERT_MANAGER_GROUP:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
    (sts,) = [d for d in built if d["kind"] == "StatefulSet"]
    assert sts["spec"]["replicas"] == 3 and sts["spec"]["podManagementPolicy"] == "Parallel"
    pod = sts["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    (c,) = pod["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"  # 503 until the replica has taken its partitions
    names = [e["name"] for e in c["env"]]
    assert len(names) == len(set(names))
    (pdb,) = [d for d in built if d["kind"] == "PodDisruptionBudget" and d["metadata"]["name"] == sts["metadata"]
              ["name"]]
    assert pdb["spec"] == {"minAvailable": 2, "selector": {"matchLabels": {"app.kubernetes.io/name":
                                                                           "sentinel-aggregator"}}}
    (hpa,) = [d for d in built if d["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet",
                                             "name": sts["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] == 3 <= hpa["spec"]["maxReplicas"]
    # The settings the pod gets turn cluster mode on.
    env = {"SENTINEL_STORE_URL": "postgresql://sentinel:pw@postgres.db.svc:5432/sentinel",
           "SENTINEL_CLUSTER_AMQP_URL": "amqps://sentinel:pw@rabbitmq.messaging.svc:5671/%2F",
           "SENTINEL_CLUSTER_REPLICA_ID": "sentinel-aggregator-0"}
    cfg = load(AggregatorConfig, args={}, env=env)
    cfg.validate()
    assert cfg.cluster.enabled and cfg.cluster.replica() == "sentinel-aggregator-0"


def test_edge_unit_starts_a_valid_store_and_forward_sidecar() -> None:
    import shlex

    from sentinel.cli import _parser
    from sentinel.config import load
    from sidecar.config import SidecarConfig

    unit = (DEPLOY / "edge" / "llm-sentinel-sidecar.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(exec_start.removeprefix("ExecStart="))[1:]
    env = dict(line.split("=", 1) for line in (DEPLOY / "edge" / "sidecar.env").read_text().splitlines()
               if line and not line.startswith("#"))
    config = load(SidecarConfig, args=_parser().parse_args(argv), env=env)
    assert config.mode == "store-and-forward" and config.effective_fsync == "always"
    assert config.aggregator_url.startswith("https://") and config.ca_file
