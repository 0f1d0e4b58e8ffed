"""Offline checks of deploy/prometheus (ServiceMonitor, PodMonitor, PrometheusRule) and deploy/grafana.

Every PromQL expression (rules and dashboard targets) is parsed with ``promql-parser`` (the Rust
parser of GreptimeDB, the grammar of Prometheus), and every metric it selects must be one the code
registers: the aggregator's (a real one started in-process), the sidecar's and the webhook's
registries, with the suffixes Prometheus exposes (``_total``, ``_bucket``, ...). So a renamed metric
breaks this test, not a dashboard in production. The monitors' ports and selectors must match the
Services and the injected sidecar; the dashboard's structure is checked (unique ids, grid, targets,
variables defined).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import CollectorRegistry

from sentinel.config import parse_duration
from sidecar.metrics import SidecarMetrics
from webhook_injector.metrics import WebhookMetrics
from webhook_injector.mutate import inject
from webhook_injector.settings import InjectorSettings

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS = REPO / "deploy" / "prometheus"
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA / "llm-sentinel-dashboard.json"
#: Series Prometheus itself makes (scrape health), allowed beside Sentinel's own metrics.
PROMETHEUS_OWN = frozenset({"up"})
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
             "summary": ("_count", "_sum", "_created"), "gauge": ("",), "info": ("_info",),
             "unknown": ("",)}


def _names(registry: CollectorRegistry) -> set[str]:
    out: set[str] = set()
    for family in registry.collect():
        out |= {family.name + s for s in _SUFFIXES.get(family.type, ("",))}
    return out


@pytest.fixture
async def registered(make_aggregator: Any) -> set[str]:
    """Every metric name the aggregator (started: its API's too), the sidecar and the webhook expose."""
    agg = await make_aggregator(grpc_listen="", webhooks=[{"name": "ops", "url": "http://127.0.0.1:9/hook"}])
    names = _names(agg.metrics.registry)
    for make in (SidecarMetrics, WebhookMetrics):
        r = CollectorRegistry()
        make(r)
        names |= _names(r)
    assert "sentinel_aggregator_detection_latency_seconds_bucket" in names
    assert "sentinel_aggregator_sink_outbox_depth" in names
    assert "sentinel_sidecar_spool_bytes" in names
    return names


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _rules() -> list[dict[str, Any]]:
    (rule,) = _docs(PROMETHEUS / "prometheusrule.yaml")
    return [r for g in rule["spec"]["groups"] for r in g["rules"]]


def _dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def _selected(expr: str) -> set[str]:
    """The metric names an expression selects (parsing it, so a syntax error fails here)."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def _grafana_expr(expr: str) -> str:
    """A dashboard query with its variables ($aggregator, ${namespace}) replaced by a value."""
    return re.sub(r"\$\{?\w+\}?", "x", expr)


def test_the_parser_refuses_bad_promql() -> None:
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(sentinel_aggregator_rows_ingested_total[5m])")
    assert _selected("rate(a_total[5m]) / on() group_left b") == {"a_total", "b"}


def test_rules_parse_and_use_only_registered_metrics(registered: set[str]) -> None:
    rules = _rules()
    for r in rules:
        used = _selected(r["expr"])
        assert used, r["alert"]
        unknown = used - registered - PROMETHEUS_OWN
        assert not unknown, f"{r['alert']}: {sorted(unknown)} are not metrics Sentinel registers"


def test_rules_are_well_formed_and_cover_sentinels_failures() -> None:
    (doc,) = _docs(PROMETHEUS / "prometheusrule.yaml")
    assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "PrometheusRule"
    assert doc["metadata"]["namespace"] == "llm-sentinel"
    rules = _rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for r in rules:
        assert set(r) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, r["alert"]
        assert re.fullmatch(r"Sentinel[A-Z]\w+", r["alert"])
        assert r["labels"]["severity"] in ("critical", "warning", "info")
        assert r["annotations"]["summary"] and r["annotations"]["description"]
        if "for" in r:
            assert parse_duration(r["for"]) > 0
    for wanted in ("SentinelSidecarNotForwarding", "SentinelSidecarSpoolFilling", "SentinelAlertOutboxGrowing",
                   "SentinelDetectionLatencyHigh", "SentinelAggregatorDown"):
        assert wanted in names


def test_monitors_match_the_services_and_the_injected_sidecar() -> None:
    service_monitors = {d["metadata"]["name"]: d for d in _docs(PROMETHEUS / "servicemonitor.yaml")}
    services = {d["metadata"]["name"]: d for path in (REPO / "deploy" / "k8s").glob("*-service.yaml")
                for d in _docs(path) if d["kind"] == "Service"}
    for name in ("sentinel-aggregator", "sentinel-webhook"):
        sm = service_monitors[name]
        assert sm["kind"] == "ServiceMonitor"
        svc = services[name]
        for key, value in sm["spec"]["selector"]["matchLabels"].items():
            assert svc["metadata"]["labels"][key] == value
        ports = {p["name"] for p in svc["spec"]["ports"]}
        for ep in sm["spec"]["endpoints"]:
            assert ep["port"] in ports and ep["path"] == "/metrics"
    (pm,) = _docs(PROMETHEUS / "podmonitor.yaml")
    assert pm["kind"] == "PodMonitor" and pm["spec"]["namespaceSelector"] == {"any": True}
    # What the webhook makes of a pod: its labels and the sidecar's ports are what the PodMonitor selects.
    pod = inject({"metadata": {"name": "app", "annotations": {}},
                  "spec": {"containers": [{"name": "app", "image": "app:1"}]}}, InjectorSettings())
    for key, value in pm["spec"]["selector"]["matchLabels"].items():
        assert pod["metadata"]["labels"][key] == value
    spec = pod["spec"]
    ports = {p["name"] for c in spec["containers"] + spec.get("initContainers", []) for p in c.get("ports", [])}
    for ep in pm["spec"]["podMetricsEndpoints"]:
        assert ep["port"] in ports and ep["path"] == "/metrics"


def test_dashboard_structure() -> None:
    d = _dashboard()
    assert d["uid"] == "llm-sentinel" and d["title"] and isinstance(d["schemaVersion"], int)
    variables = {v["name"] for v in d["templating"]["list"]}
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["type"] in ("timeseries", "stat", "table", "gauge", "bargauge"), p["title"]
        assert p["datasource"]["uid"] == "${datasource}"
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            used = set(re.findall(r"\$\{?(\w+)\}?", t["expr"]))
            assert used <= variables, (p["title"], used - variables)
    # No two panels overlap on the grid.
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, p["title"]
        cells |= mine


def test_dashboard_queries_parse_and_cover_what_operators_watch(registered: set[str]) -> None:
    used: set[str] = set()
    for p in _dashboard()["panels"]:
        for t in p.get("targets", []):
            names = _selected(_grafana_expr(t["expr"]))
            unknown = names - registered - PROMETHEUS_OWN
            assert not unknown, f"{p['title']}: {sorted(unknown)} are not metrics Sentinel registers"
            used |= names
    for wanted in ("sentinel_aggregator_rows_ingested_total", "sentinel_aggregator_analysis_backlog_rows",
                   "sentinel_aggregator_detection_latency_seconds_bucket", "sentinel_aggregator_alerts_total",
                   "sentinel_aggregator_sink_sent_total", "sentinel_aggregator_sink_outbox_depth",
                   "sentinel_sidecar_spool_bytes", "sentinel_sidecar_forwarded_rows_total",
                   "sentinel_sidecar_dropped_rows_total", "sentinel_aggregator_alert_feedback_total"):
        assert wanted in used, wanted


KUBECTL = shutil.which("kubectl")


@pytest.mark.skipif(KUBECTL is None, reason="needs kubectl on PATH (its built-in kustomize)")
def test_kustomizations_build() -> None:
    assert KUBECTL
    out = subprocess.run([KUBECTL, "kustomize", str(PROMETHEUS)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(out.stdout) if d)
    assert kinds == ["PodMonitor", "PrometheusRule", "ServiceMonitor", "ServiceMonitor"]
    out = subprocess.run([KUBECTL, "kustomize", str(GRAFANA)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    (cm,) = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["llm-sentinel-dashboard.json"]) == _dashboard()
