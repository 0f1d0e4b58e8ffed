"""GenAI metrics → feature rows, for keys from which no spans come.

Many apps export only the OpenTelemetry GenAI metrics. Their histograms are read here and turned
into rows the local detector and the aggregator treat like span rows, so such a key still gets
baselines and detections (latency, tokens, TTFT, call rate and error rate):

=========================================================  ===================================
metric (unit ``s`` or ``ms``; tokens ``{token}``)           column
=========================================================  ===================================
``gen_ai.client.operation.duration``                        ``latency_ms``; one row per call,
                                                            ``is_error`` and ``error_type`` from
                                                            the point's ``error.type``
``gen_ai.client.token.usage`` (``gen_ai.token.type``)       ``input_tokens`` / ``output_tokens``
``gen_ai.server.time_to_first_token``,                      ``ttft_ms``
``gen_ai.client.operation.time_to_first_chunk``
``gen_ai.server.time_per_output_token``,                    ``tokens_per_s`` (1 / the value)
``gen_ai.client.operation.time_per_output_chunk``
=========================================================  ===================================

A histogram point holds counts per bucket, not single values: each interval's counts (the
difference from the stream's previous point when it is cumulative) become that many values at
the buckets' midpoints (the first bucket's upper bound halved; the overflow bucket at ``max`` if
given, else its lower bound), scaled so that their mean is the interval's exact ``sum / count``.
A key's latency, token and TTFT values of one request are laid side by side into rows (the first
row gets the first of each): every column's distribution is right, but the pairing of values
within a row is not a real call's, so ``tokens_per_s`` comes only from the time-per-token
metrics, never from a row's tokens and latency; cost is priced per row, so its sum is right.
Rows have no trace or span id, no user and no finish reason.

Keys seen in span rows within ``span_window_s`` are skipped (their spans already give one exact
row per call). Exponential histograms and other metrics are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sentinel.config import ConfigError, setting
from sentinel.model import Row
from sentinel.pricing import PriceBook
from sidecar.attributes import normalize_error_type

__all__ = ["DURATION", "PER_TOKEN_METRICS", "TOKEN_USAGE", "TTFT_METRICS", "GenAiMetricsReader", "MetricsConfig",
           "MetricsResult", "bucket_values"]

DURATION = "gen_ai.client.operation.duration"
TOKEN_USAGE = "gen_ai.client.token.usage"
TTFT_METRICS = ("gen_ai.server.time_to_first_token", "gen_ai.client.operation.time_to_first_chunk")
PER_TOKEN_METRICS = ("gen_ai.server.time_per_output_token", "gen_ai.client.operation.time_per_output_chunk")
_READ = frozenset((DURATION, TOKEN_USAGE, *TTFT_METRICS, *PER_TOKEN_METRICS))
_CUMULATIVE = 2  # AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
_POINT_KEYS = frozenset({"gen_ai.request.model", "gen_ai.response.model", "gen_ai.operation.name",
                         "gen_ai.provider.name", "gen_ai.system", "error.type", "gen_ai.token.type"})
_RESOURCE_KEYS = ("service.name", "k8s.namespace.name", "k8s.pod.name", "cloud.region")


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    """The sidecar's ``genai_metrics.enabled:`` section (``MetricsConfig(span_window_s=60)``)."""

    enabled: bool = setting(True, "turn OTel GenAI metric histograms into rows for keys no spans come for (see "
                            "sidecar/README.md)")
    span_window_s: float = setting(300.0, "a key whose span rows came within this long is not rowed from metrics")
    max_rows_per_point: int = setting(1000, "rows one histogram point may become per interval; beyond it the "
                                      "values are thinned (counted)")
    max_series: int = setting(10_000, "metric streams (and span-covered keys) remembered; beyond it they are "
                              "forgotten and start over")

    def validate(self) -> None:
        if self.span_window_s < 0:
            raise ConfigError("genai_metrics.span_window_s: must not be negative")
        if self.max_rows_per_point <= 0:
            raise ConfigError("genai_metrics.max_rows_per_point: must be greater than 0")
        if self.max_series <= 0:
            raise ConfigError("genai_metrics.max_series: must be greater than 0")


@dataclass(slots=True)
class MetricsResult:
    rows: list[Row] = field(default_factory=list)
    points: int = 0  # GenAI histogram points read
    skipped_keys: int = 0  # points of keys that spans already cover
    capped_values: int = 0  # values left out by max_rows_per_point


def bucket_values(bounds: Iterable[float], counts: Iterable[int], total: float, maximum: float | None,
                  limit: int) -> list[float]:
    """The values a histogram interval stands for (see the module docstring), at most ``limit``.

    One value in (0, 1] and one in (1, 2], summing to 3: the midpoints 0.5 and 1.5, scaled to mean 1.5.

    >>> bucket_values([1.0, 2.0], [1, 1, 0], 3.0, None, 100)
    [0.75, 2.25]
    """
    bounds, counts = list(bounds), list(counts)
    n = sum(counts)
    if n <= 0:
        return []
    keep = min(1.0, limit / n)
    values: list[float] = []
    for i, c in enumerate(counts):
        if c <= 0:
            continue
        if i == 0:
            rep = bounds[0] / 2.0 if bounds else (total / n)
        elif i < len(bounds):
            rep = (bounds[i - 1] + bounds[i]) / 2.0
        else:
            rep = maximum if maximum is not None and maximum >= bounds[-1] else bounds[-1]
        values.extend([rep] * (c if keep == 1.0 else max(1, round(c * keep))))
    del values[limit:]
    mean_rep = sum(values) / len(values)
    if mean_rep > 0.0 and math.isfinite(total) and total >= 0.0:
        scale = (total / n) / mean_rep
        values = [v * scale for v in values]
    return values


@dataclass(slots=True)
class _Series:
    start: int
    count: int
    total: float
    buckets: tuple[int, ...]


@dataclass(slots=True)
class _KeyValues:
    ok_latency: list[float] = field(default_factory=list)
    errors: list[tuple[float, str]] = field(default_factory=list)
    input_tokens: list[float] = field(default_factory=list)
    output_tokens: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    tokens_per_s: list[float] = field(default_factory=list)
    time: int = 0


class GenAiMetricsReader:
    """Keeps the previous point of each cumulative stream (at most ``max_series``; beyond, all
    are forgotten and the next points count from their streams' start)."""

    def __init__(self, config: MetricsConfig, prices: PriceBook) -> None:
        self.config = config
        self._prices = prices
        self._series: dict[tuple[Any, ...], _Series] = {}

    def read(self, request: Any, spans_cover: Callable[[tuple[Any, Any, Any]], bool]) -> MetricsResult:
        """Rows from an ``ExportMetricsServiceRequest``; ``spans_cover((service, model, operation))``
        says whether span rows already come for a key."""
        result = MetricsResult()
        by_key: dict[tuple[Any, ...], _KeyValues] = {}
        for rm in request.resource_metrics:
            resource = _strings(rm.resource.attributes, _RESOURCE_KEYS)
            res = tuple(resource.get(k) for k in _RESOURCE_KEYS)
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name not in _READ or metric.WhichOneof("data") != "histogram":
                        continue
                    self._read_metric(metric, res, spans_cover, by_key, result)
        for key, kv in by_key.items():
            self._rows(key, kv, result)
        return result

    def _read_metric(self, metric: Any, res: tuple[Any, ...], spans_cover: Callable[[tuple[Any, Any, Any]], bool],
                     by_key: dict[tuple[Any, ...], _KeyValues], result: MetricsResult) -> None:
        scale = 1000.0 if metric.name != TOKEN_USAGE and metric.unit != "ms" else 1.0
        cumulative = metric.histogram.aggregation_temporality == _CUMULATIVE
        for point in metric.histogram.data_points:
            result.points += 1
            attrs = _strings(point.attributes, _POINT_KEYS)
            model = attrs.get("gen_ai.request.model") or attrs.get("gen_ai.response.model")
            operation = attrs.get("gen_ai.operation.name")
            if spans_cover((res[0], model, operation)):
                result.skipped_keys += 1
                continue
            counts, total = self._interval(metric.name, res, point, cumulative)
            values = bucket_values(point.explicit_bounds, counts, total * scale,
                                   point.max * scale if point.HasField("max") else None,
                                   self.config.max_rows_per_point)
            result.capped_values += max(0, sum(counts) - len(values))
            if not values:
                continue
            key = (*res, operation, attrs.get("gen_ai.provider.name") or attrs.get("gen_ai.system"), model,
                   attrs.get("gen_ai.response.model"))
            kv = by_key.setdefault(key, _KeyValues())
            kv.time = max(kv.time, point.time_unix_nano)
            if metric.name == DURATION:
                error = normalize_error_type(attrs.get("error.type", ""))
                if error:
                    kv.errors.extend((v, error) for v in values)
                else:
                    kv.ok_latency.extend(values)
            elif metric.name == TOKEN_USAGE:
                kind = attrs.get("gen_ai.token.type")
                if kind == "input":
                    kv.input_tokens.extend(values)
                elif kind == "output":
                    kv.output_tokens.extend(values)
            elif metric.name in PER_TOKEN_METRICS:
                kv.tokens_per_s.extend(1000.0 / v for v in values if v > 0.0)  # ms per token -> tokens/s
            else:
                kv.ttft.extend(values)

    def _interval(self, name: str, res: tuple[Any, ...], point: Any, cumulative: bool) -> tuple[list[int], float]:
        """The point's bucket counts and sum for its own interval."""
        counts = list(point.bucket_counts)
        total = point.sum
        if not cumulative:
            return counts, total
        ident = (name, res, tuple(kv.SerializeToString() for kv in point.attributes))
        prev = self._series.get(ident)
        if len(self._series) >= self.config.max_series and prev is None:
            self._series.clear()
        self._series[ident] = _Series(point.start_time_unix_nano, point.count, total, tuple(counts))
        if (prev is None or prev.start != point.start_time_unix_nano or point.count < prev.count
                or len(prev.buckets) != len(counts)):
            return counts, total  # a new (or restarted) stream: all of it is new
        return [c - p for c, p in zip(counts, prev.buckets, strict=True)], total - prev.total

    def _rows(self, key: tuple[Any, ...], kv: _KeyValues, result: MetricsResult) -> None:
        service, namespace, pod, region, operation, provider, model, response_model = key
        # Successful calls first: they are the ones tokens and TTFT were recorded for.
        latency: list[tuple[float | None, str | None]] = [(v, None) for v in kv.ok_latency]
        latency.extend(kv.errors)
        n = max(len(latency), len(kv.input_tokens), len(kv.output_tokens), len(kv.ttft), len(kv.tokens_per_s))
        prices = self._prices.resolve(provider, response_model or model, model)
        for i in range(n):
            lat, error = latency[i] if i < len(latency) else (None, None)
            tin = kv.input_tokens[i] if i < len(kv.input_tokens) else None
            tout = kv.output_tokens[i] if i < len(kv.output_tokens) else None
            ttft = kv.ttft[i] if i < len(kv.ttft) else None
            tps = kv.tokens_per_s[i] if i < len(kv.tokens_per_s) else None
            cost = None
            if prices is not None and (tin is not None or tout is not None):
                cost = (tin or 0.0) * prices[0] + (tout or 0.0) * prices[1]
            result.rows.append((kv.time, service, namespace, pod, region, operation, provider, model,
                                response_model, lat, ttft, tin, tout, tps, cost, error is not None, error,
                                None, None, None, None, None))


def _strings(attributes: Iterable[Any], wanted: Iterable[str]) -> dict[str, str]:
    """The string values of the ``wanted`` keys among generated ``KeyValue`` messages."""
    keys = set(wanted)
    out: dict[str, str] = {}
    for kv in attributes:
        if kv.key in keys and kv.value.WhichOneof("value") == "string_value":
            out[kv.key] = kv.value.string_value
    return out
