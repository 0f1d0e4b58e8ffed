"""One set of rules for settings, flat or nested in maps (``detectors:``, ``forest:``, ``webhooks:``).

The process settings and the component maps go through the same conversion
(:func:`sentinel.config.load_map`): a number of seconds (``*_s``) takes a duration such as ``5m``, a
number of bytes (``*_bytes``) a size such as ``4MiB``, and an error names the full key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from aggregator.alerting.webhook_sink import parse_webhooks
from aggregator.analysis.detectors.consumer import parse_detector_settings
from aggregator.analysis.quality.consumer import parse_quality_settings
from aggregator.analysis.security.consumer import parse_security_settings
from aggregator.config import AggregatorConfig, forest_config
from sentinel.config import ConfigError, load, load_map


@dataclass
class Part:
    window_s: float = 60.0
    max_bytes: int = 1024
    count: int = 3
    names: tuple[str, ...] = ()


def test_durations_and_sizes_inside_maps() -> None:
    part = load_map(Part, {"window_s": "5m", "max_bytes": "4KiB", "count": 7, "names": ["a", "b"]}, "x.part")
    assert part == Part(window_s=300.0, max_bytes=4096, count=7, names=("a", "b"))


@pytest.mark.parametrize(("raw", "message"), [
    ({"window_s": "soon"}, r"^x\.part\.window_s: not a duration"),
    ({"max_bytes": "lots"}, r"^x\.part\.max_bytes: not a size"),
    ({"count": 2.5}, r"^x\.part\.count: not an integer"),
    ({"colour": "red"}, r"^x\.part\.colour: unknown setting \(known: window_s, max_bytes, count, names\)"),
])
def test_errors_name_the_full_key(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_map(Part, raw, "x.part")
    with pytest.raises(ConfigError, match=r"^x\.part: must be a map"):
        load_map(Part, ["window_s"], "x.part")


def test_the_detectors_forest_and_webhooks_follow_the_process_rules() -> None:
    assert load(AggregatorConfig, args={"late_after_s": "5m"}, env={}).late_after_s == 300.0
    detectors = parse_detector_settings({"error_burst": {"window_s": "5m"}})
    assert detectors["error_burst"].window_s == 300.0  # refused before: only the flat settings took durations
    forest = forest_config({"retrain_interval_s": "2m", "features": ["latency_ms", "ttft_ms"],
                            "log_features": ["latency_ms"]})
    assert forest is not None and forest.retrain_interval_s == 120.0 and forest.features == ("latency_ms", "ttft_ms")
    (hook,) = parse_webhooks([{"name": "ops", "url": "https://x/", "timeout_s": "250ms", "headers": {"X-Id": 7}}])
    assert hook.timeout_s == 0.25 and hook.headers == {"X-Id": "7"}


@pytest.mark.parametrize(("call", "message"), [
    (lambda: parse_detector_settings({"error_burst": {"window_s": "soon"}}), r"^detectors\.error_burst\.window_s:"),
    (lambda: parse_detector_settings({"error_burst": {"windw_s": 5}}), r"^detectors\.error_burst\.windw_s: unknown"),
    (lambda: forest_config({"retrain_interval_s": "soon"}), r"^forest\.retrain_interval_s:"),
    (lambda: forest_config({"trees": 5}), r"^forest\.trees: unknown"),
    (lambda: parse_webhooks([{"name": "a", "url": "https://x/", "backoff_s": "later"}]), r"^webhooks\[0\]\.backoff_s:"),
    (lambda: parse_webhooks([{"name": "a", "url": "https://x/", "retries": 3}]), r"^webhooks\[0\]\.retries: unknown"),
    (lambda: parse_quality_settings({"join_wait_s": "soon"}), r"^quality\.join_wait_s:"),
    (lambda: parse_security_settings({"window_s": "soon"}), r"^security\.window_s:"),
])
def test_component_map_errors_name_the_full_key(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        call()


def test_the_sidecars_detection_map_takes_the_same_rule() -> None:
    """``detection.error_rate.window: 5m`` (sidecar) and ``detectors.error_burst.window_s: 5m`` (aggregator):
    one parser (load_map), so one rule for durations and one form of error."""
    from sidecar.detectors.local_config import LocalDetectionConfig

    local = LocalDetectionConfig.from_mapping({"error_rate": {"window": "5m"}, "zscore": {"half_life": "1.5h"}})
    burst = parse_detector_settings({"error_burst": {"window_s": "5m"}})["error_burst"]
    assert local.error_rate.window == burst.window_s == 300.0 and local.zscore.half_life == 5400.0
    with pytest.raises(ConfigError, match=r"^detection\.error_rate\.window: not a duration"):
        LocalDetectionConfig.from_mapping({"error_rate": {"window": "soon"}})
    with pytest.raises(ConfigError, match=r"^detection\.robust\.windw: unknown setting"):
        LocalDetectionConfig.from_mapping({"robust": {"windw": 5}})
