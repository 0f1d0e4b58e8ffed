"""Each package's public API is pinned: its ``__all__`` changes only on purpose, here (as httpx does).

Every name resolves (packages with lazy exports import it on first use, :mod:`sentinel.exports`)
and is defined inside the package, so ``from aggregator import Aggregator`` cannot quietly start
meaning something else.
"""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PUBLIC_API: dict[str, list[str]] = {
    "sentinel": ["Alert", "ConfigError", "FeatureBatch", "LocalAnomaly", "WireBatch", "WireFormatError"],
    "sentinel.cli": ["main"],
    "sidecar": ["Sidecar", "SidecarConfig"],
    "sidecar.detectors": ["LocalDetectionConfig", "LocalDetector"],
    "webhook_injector": ["InjectorSettings", "WebhookMetrics", "WebhookServer", "annotation_warnings", "inject",
                         "mutate", "review", "should_inject"],
    "aggregator": ["Aggregator", "AggregatorConfig"],
    "aggregator.ingest": ["ClockCheck", "Dedup", "IngestConfig", "IngestJournal", "IngestService", "IngestTokens",
                          "clamp_future"],
    "aggregator.analysis": ["Analysis", "Candidate", "CandidateLog", "Consumer", "JsonStateFile",
                            "LocalAnomalyConfirmer", "SeriesConsumer", "StateFile"],
    "aggregator.analysis.baselines": ["BaselineConfig", "BaselineConsumer", "BaselineKey", "BaselineStore"],
    "aggregator.analysis.detectors": [
        "ANOMALY_TYPES", "BudgetConfig", "BudgetDetector", "Candidate", "ContentFilterConfig", "ContentFilterDetector",
        "CostCusumConfig", "CostCusumDetector", "DriftConfig", "DriftDetector", "EmptyAnswerConfig",
        "EmptyAnswerDetector", "ErrorBurstConfig", "ErrorBurstDetector", "ExpensivePromptConfig",
        "ExpensivePromptDetector", "FinishLengthConfig", "FinishLengthDetector", "LevelShiftConfig",
        "LevelShiftDetector", "ModelSwapConfig", "ModelSwapDetector", "ThroughputDropConfig",
        "ThroughputDropDetector", "TokenAbuseConfig", "TokenAbuseDetector"],
    "aggregator.analysis.quality": ["CallIndex", "ModelVersions", "QualityConfig", "QualityConsumer",
                                    "parse_quality_settings"],
    "aggregator.analysis.security": ["Action", "ActionHook", "ActionStore", "MemoryActionStore",
                                     "SecurityConfig", "SecurityConsumer", "parse_security_settings"],
    "aggregator.analysis.forest": ["ForestConfig", "ForestConsumer", "ForestFiles", "IsolationForest", "TrainedForest"],
    "aggregator.alerting": ["AlertHub", "AlertManager", "AlertManagerConfig", "AlertStore", "AmqpSink",
                            "SQLiteAlertStore", "Sink", "WebhookSink"],
    "aggregator.cluster": ["ClusterApi", "ClusterConfig", "ClusterIngest", "ClusterView", "Coordinator", "EventRouter",
                           "partition_of"],
    "aggregator.api": ["AlertActions", "Api", "Roles", "add_api_routes", "auth_middleware", "load_openapi",
                       "route_coverage"],
    "aggregator.web": ["STATIC_DIR", "WEB_DIR", "add_web_routes"],
}

#: Packages without a pinned API: generated protobuf code (its names are the .proto's).
UNPINNED = {"sentinel.v1"}


@pytest.mark.parametrize("package", sorted(PUBLIC_API))
def test_the_public_api_is_pinned(package: str) -> None:
    module = importlib.import_module(package)
    assert sorted(module.__all__) == sorted(PUBLIC_API[package]), f"{package}.__all__ changed: update PUBLIC_API"
    top = package.split(".")[0]
    for name in module.__all__:
        value = getattr(module, name)
        home = value.__module__ if inspect.isclass(value) or inspect.isfunction(value) else None
        if home is not None:  # constants (numbers, paths) come from nowhere in particular
            assert home.split(".")[0] == top, f"{package}.{name} comes from {home}"


def test_every_package_is_pinned() -> None:
    packages = {".".join(p.parent.relative_to(REPO).parts) for top in ("sentinel", "sidecar", "aggregator",
                                                                         "webhook_injector")
                for p in (REPO / top).rglob("__init__.py")}
    assert packages - UNPINNED == set(PUBLIC_API), "a package without its __all__ pinned here (or gone)"


def test_an_unknown_name_is_an_attribute_error() -> None:
    import aggregator

    with pytest.raises(AttributeError, match="'aggregator' has no attribute 'Nothing'"):
        aggregator.Nothing  # noqa: B018


def test_importing_the_sidecar_does_not_load_the_aggregator() -> None:
    """Lazy exports: the sidecar's process never imports the aggregator (nor its dependencies)."""
    code = ("import sys, sidecar, sidecar.app, sentinel, sidecar.detectors; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('aggregator', 'webhook_injector', "
            "'loadtest', 'aio_pika')))")  # ddsketch: the sidecar's own summaries (forward: summaries) use it
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert r.stdout.strip() == "[]"
