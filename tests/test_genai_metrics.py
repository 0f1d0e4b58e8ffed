"""GenAI metric histograms → rows, for keys no spans come for; requests made by the real OTel SDK."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    InMemoryMetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from loadtest.recorder import RecordingAggregator
from sentinel.config import ConfigError
from sentinel.model import COLUMNS, FeatureBatch
from sentinel.pricing import PriceBook
from sidecar.detectors.local import LocalDetectionConfig, LocalDetector
from sidecar.genai_metrics import DURATION, TOKEN_USAGE, GenAiMetricsReader, MetricsConfig, bucket_values
from tests.conftest import SidecarFactory, wait_for

# The GenAI semantic conventions' advisory buckets (seconds; tokens).
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
TTFT = "gen_ai.server.time_to_first_token"
PRICES = {"gpt-4o-mini": {"input": 0.15, "output": 0.6}}
BASE = {"gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18", "server.address": "api.openai.com"}


class App:
    """A GenAI-instrumented app's meters, as ``opentelemetry-instrumentation-openai-v2`` records them."""

    def __init__(self, reader: Any) -> None:
        views = [View(instrument_name=DURATION, aggregation=ExplicitBucketHistogramAggregation(DURATION_BUCKETS)),
                 View(instrument_name=TTFT, aggregation=ExplicitBucketHistogramAggregation(DURATION_BUCKETS)),
                 View(instrument_name=TOKEN_USAGE, aggregation=ExplicitBucketHistogramAggregation(TOKEN_BUCKETS))]
        self.provider = MeterProvider(metric_readers=[reader], views=views,
                                      resource=Resource.create({"service.name": "metrics-only"}))
        meter = self.provider.get_meter("test")
        self.duration = meter.create_histogram(DURATION, unit="s")
        self.ttft = meter.create_histogram(TTFT, unit="s")
        self.tokens = meter.create_histogram(TOKEN_USAGE, unit="{token}")

    def call(self, seconds: float, *, ttft: float | None = None, tokens: tuple[int, int] = (100, 20),
             error: str | None = None, model: str = "gpt-4o-mini") -> None:
        attrs = {**BASE, "gen_ai.request.model": model}
        if error:
            self.duration.record(seconds, {**attrs, "error.type": error})
            return
        self.duration.record(seconds, attrs)
        if ttft is not None:
            self.ttft.record(ttft, attrs)
        self.tokens.record(tokens[0], {**attrs, "gen_ai.token.type": "input"})
        self.tokens.record(tokens[1], {**attrs, "gen_ai.token.type": "output"})


@pytest.fixture
def memory_app() -> Iterator[tuple[App, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    app = App(reader)
    yield app, reader
    app.provider.shutdown()


def export(reader: InMemoryMetricReader) -> Any:
    data = reader.get_metrics_data()
    assert data is not None
    return encode_metrics(data)


def rows_of(reader: GenAiMetricsReader, request: Any,
            covered: set[tuple[Any, ...]] | None = None) -> list[dict[str, Any]]:
    result = reader.read(request, lambda key: key in (covered or set()))
    return [dict(zip(COLUMNS, r, strict=True)) for r in result.rows]


def test_bucket_values_keep_the_mean_and_the_bound() -> None:
    values = bucket_values([1.0, 2.0, 4.0], [2, 1, 0, 1], 12.0, 7.0, 100)
    assert len(values) == 4 and statistics.mean(values) == pytest.approx(3.0)
    assert values[0] == values[1] < values[2] < values[3]
    thinned = bucket_values([1.0], [5000, 5000], 15000.0, None, 1000)
    assert len(thinned) == 1000 and statistics.mean(thinned) == pytest.approx(1.5)
    assert bucket_values([1.0], [0, 0], 0.0, None, 10) == []


def test_calls_become_rows_and_cumulative_points_count_only_new_calls(
        memory_app: tuple[App, InMemoryMetricReader]) -> None:
    app, mem = memory_app
    reader = GenAiMetricsReader(MetricsConfig(), PriceBook(PRICES))
    for _ in range(4):
        app.call(0.5, ttft=0.1)
    app.call(0.03, error="openai.RateLimitError")
    rows = rows_of(reader, export(mem))
    assert len(rows) == 5
    ok, failed = rows[:4], rows[4]
    for r in ok:
        assert (r["service"], r["operation"], r["provider"], r["request_model"], r["response_model"]) == \
            ("metrics-only", "chat", "openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18")
        assert r["latency_ms"] == pytest.approx(500.0) and r["ttft_ms"] == pytest.approx(100.0)
        assert (r["input_tokens"], r["output_tokens"]) == (pytest.approx(100.0), pytest.approx(20.0))
        assert r["cost_usd"] == pytest.approx((100 * 0.15 + 20 * 0.6) / 1e6)
        assert r["is_error"] is False and r["trace_id"] is None and r["tokens_per_s"] is None  # no such metric
    assert (failed["is_error"], failed["error_type"], failed["input_tokens"]) == (True, "RateLimitError", None)
    assert failed["latency_ms"] == pytest.approx(30.0)
    # the next (cumulative) export holds the old calls too: only the new one becomes a row
    app.call(2.0, ttft=0.3)
    (new,) = rows_of(reader, export(mem))
    assert new["latency_ms"] == pytest.approx(2000.0) and new["ttft_ms"] == pytest.approx(300.0)
    assert rows_of(reader, export(mem)) == []  # nothing new


def test_keys_that_spans_cover_are_not_rowed_from_metrics(memory_app: tuple[App, InMemoryMetricReader]) -> None:
    app, mem = memory_app
    reader = GenAiMetricsReader(MetricsConfig(), PriceBook(PRICES))
    app.call(0.5)
    app.call(0.5, model="gpt-4o")
    rows = rows_of(reader, export(mem), covered={("metrics-only", "gpt-4o-mini", "chat")})
    assert [r["request_model"] for r in rows] == ["gpt-4o"]


def test_delta_temporality_is_read_as_is() -> None:
    mem = InMemoryMetricReader(preferred_temporality={
        cls: AggregationTemporality.DELTA for cls in _histogram_types()})
    app = App(mem)
    reader = GenAiMetricsReader(MetricsConfig(), PriceBook(PRICES))
    app.call(0.5)
    assert len(rows_of(reader, export(mem))) == 1
    app.call(0.5)
    assert len(rows_of(reader, export(mem))) == 1
    app.provider.shutdown()


def _histogram_types() -> list[type]:
    from opentelemetry.sdk.metrics import Histogram
    return [Histogram]


def test_a_latency_and_ttft_regression_in_metrics_is_detected(memory_app: tuple[App, InMemoryMetricReader]) -> None:
    app, mem = memory_app
    reader = GenAiMetricsReader(MetricsConfig(), PriceBook(PRICES))
    detector = LocalDetector(LocalDetectionConfig.from_mapping({}))
    found = []
    for interval in range(30):
        slow = interval >= 25
        for i in range(5):
            app.call(8.0 if slow else 0.3 + 0.01 * i, ttft=3.0 if slow else 0.1)
        rows = reader.read(export(mem), lambda key: False).rows
        found.extend(detector.process(FeatureBatch.from_rows(rows)))
    metrics = {a.metric for a in found}
    assert {"latency_ms", "ttft_ms"} <= metrics
    assert all(a.value > 1000.0 for a in found if a.metric in ("latency_ms", "ttft_ms"))


def test_config_names_the_bad_key() -> None:
    with pytest.raises(ConfigError, match=r"genai_metrics\.max_rows_per_point"):
        MetricsConfig(max_rows_per_point=0).validate()


async def test_metrics_over_otlp_grpc_reach_the_aggregator_as_rows(
        make_sidecar: SidecarFactory, recorder: RecordingAggregator) -> None:
    sc = await make_sidecar(aggregator_url=recorder.url)
    exporter = OTLPMetricExporter(endpoint=f"127.0.0.1:{sc.ports()['grpc']}", insecure=True)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    app = App(reader)
    try:
        for _ in range(3):
            app.call(0.4, ttft=0.05)
        assert await asyncio.to_thread(app.provider.force_flush)  # the sidecar runs on this loop
        await wait_for(lambda: recorder.rows >= 3, what="metric rows at the aggregator")
    finally:
        await asyncio.to_thread(app.provider.shutdown)
    rows = [r for b in recorder.batches for r in b.batch.rows()]
    assert len(rows) == 3 and all(r["latency_ms"] == pytest.approx(400.0) for r in rows)
    assert sc.metrics.metric_rows._value.get() == 3


async def test_a_key_with_spans_is_not_also_rowed_from_its_metrics(
        make_sidecar: SidecarFactory, recorder: RecordingAggregator) -> None:
    sc = await make_sidecar(aggregator_url=recorder.url)
    endpoint = f"127.0.0.1:{sc.ports()['grpc']}"

    def one_span() -> None:  # in a thread: the export is synchronous and the sidecar runs on this loop
        tracer_provider = TracerProvider(resource=Resource.create({"service.name": "metrics-only"}))
        tracer_provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
        tracer_provider.get_tracer("test").start_span("chat gpt-4o-mini", attributes=BASE).end()
        tracer_provider.shutdown()

    await asyncio.to_thread(one_span)
    await wait_for(lambda: recorder.rows >= 1, what="the span's row")
    app = App(PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=endpoint, insecure=True),
                                            export_interval_millis=3_600_000))
    try:
        app.call(0.5)  # the key the span came for: its spans give the rows
        app.call(0.5, model="gpt-4o")  # no spans for this key
        assert await asyncio.to_thread(app.provider.force_flush)
        await wait_for(lambda: recorder.rows >= 2, what="the metric row")
    finally:
        await asyncio.to_thread(app.provider.shutdown)
    rows = [r for b in recorder.batches for r in b.batch.rows()]
    assert [(r["request_model"], r["trace_id"] is None) for r in rows] == [("gpt-4o-mini", False), ("gpt-4o", True)]


def test_time_per_output_token_gives_throughput(memory_app: tuple[App, InMemoryMetricReader]) -> None:
    app, mem = memory_app
    tpot = app.provider.get_meter("test").create_histogram("gen_ai.server.time_per_output_token", unit="s")
    reader = GenAiMetricsReader(MetricsConfig(), PriceBook(PRICES))
    for _ in range(3):
        app.call(1.0)
        tpot.record(0.02, BASE)  # 20 ms per token: 50 tokens/s
    rows = rows_of(reader, export(mem))
    assert len(rows) == 3
    # the default buckets put 20 ms in (10, 25] ms; the interval's exact mean makes it 20 ms
    assert [r["tokens_per_s"] for r in rows] == [pytest.approx(50.0)] * 3
