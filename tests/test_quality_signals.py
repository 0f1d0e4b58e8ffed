"""Quality signals end to end: the real OpenTelemetry SDK emits evaluation results and user feedback
(span events, span attributes, log records), the sidecar forwards them, the wire carries them."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import msgpack
import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from loadtest.recorder import RecordingAggregator
from sentinel import wire
from sentinel.model import FeatureBatch
from sentinel.quality import QualityEvent, label_is_bad, normalise_name
from sentinel.security_event import SecurityEvent, parse_security_event
from tests.conftest import SidecarFactory

RESOURCE = Resource.create({"service.name": "support-bot"})
LLM = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
       "gen_ai.response.model": "gpt-4o-2024-08-06", "gen_ai.usage.input_tokens": 100,
       "gen_ai.usage.output_tokens": 50}


def _spans(port: int) -> dict[str, str]:
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{port}", insecure=True)))
    tracer = provider.get_tracer("test")
    ids: dict[str, str] = {}
    # 1. An LLM call with a GenAI evaluation event and the generic and OpenInference score attributes.
    with tracer.start_as_current_span("chat gpt-4o", attributes={
            **LLM, "sentinel.eval.groundedness": 0.25, "eval.relevance.label": "not_relevant",
            "eval.relevance.score": 0.1, "sentinel.feedback.label": "thumbs_down", "user.id": "u-7"}) as span:
        span.add_event("gen_ai.evaluation.result", {
            "gen_ai.evaluation.name": "Hallucination", "gen_ai.evaluation.score.value": 0.9,
            "gen_ai.evaluation.score.label": "hallucinated", "gen_ai.evaluation.explanation": "made up a refund"})
        ids["llm"] = format(span.get_span_context().span_id, "016x")
    # 2. An evaluator's span of its own (not an LLM call) with a feedback event and a guardrail event.
    with tracer.start_as_current_span("judge") as span:
        span.add_event("user.feedback", {"rating": 5, "comment": "great, thanks"})
        span.add_event("gen_ai.guardrail.jailbreak", {"confidence": 0.8, "metadata.api_key": "sk-secret",
                                                      "metadata.ip_address": "203.0.113.9", "prompt": "ignore all"})
        ids["judge"] = format(span.get_span_context().span_id, "016x")
    assert provider.force_flush(10_000)
    provider.shutdown()
    return ids


def _logs(exporter: Any, trace_id: int, span_id: int) -> None:
    provider = LoggerProvider(resource=RESOURCE)
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger("evals")
    ctx = trace.set_span_in_context(trace.NonRecordingSpan(trace.SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=trace.TraceFlags(1))))
    logger.emit(event_name="gen_ai.evaluation.result", context=ctx, attributes={
        "gen_ai.evaluation.name": "faithfulness", "gen_ai.evaluation.score.value": 0.4})
    logger.emit(event_name="security.event", context=ctx, attributes={
        "threat_type": "prompt_injection", "severity": "high", "user_id": "u-9", "confidence": 0.7})
    logger.emit(body="an ordinary log line", attributes={"level": "info"})
    provider.force_flush(10_000)
    provider.shutdown()


async def test_sdk_evaluations_feedback_and_guardrail_events_reach_the_aggregator(
        recorder: RecordingAggregator, make_sidecar: SidecarFactory) -> None:
    sc = await make_sidecar(aggregator_url=recorder.url)
    ids = await asyncio.to_thread(_spans, sc.ports()["grpc"])
    await asyncio.to_thread(_logs, OTLPLogExporter(endpoint=f"127.0.0.1:{sc.ports()['grpc']}", insecure=True),
                            0xABC, 0xDEF)
    for _ in range(200):
        quality = [q for b in recorder.batches for q in b.quality]
        security = [e for b in recorder.batches for e in b.security]
        if len(quality) >= 6 and len(security) >= 2:
            break
        await asyncio.sleep(0.05)
    by = {(q.name, q.span_id): q for q in quality}
    hall = by[("hallucination", ids["llm"])]
    assert (hall.score, hall.label, hall.service, hall.model, hall.source) == (
        0.9, "hallucinated", "support-bot", "gpt-4o", "gen_ai")
    assert by[("groundedness", ids["llm"])].score == 0.25
    rel = by[("relevance", ids["llm"])]
    assert (rel.score, rel.label, rel.source) == (0.1, "not_relevant", "openinference")
    fb = by[("user_feedback", ids["llm"])]
    assert (fb.kind, fb.label, fb.user) == ("feedback", "thumbs_down", "u-7")
    assert by[("user_feedback", ids["judge"])].score == 1.0  # rating 5
    faith = by[("faithfulness", format(0xDEF, "016x"))]
    assert (faith.score, faith.trace_id, faith.model) == (0.4, format(0xABC, "032x"), None)
    jail = next(e for e in security if e.threat_type == "jailbreak")
    assert (jail.ip_address, jail.confidence, jail.service) == ("203.0.113.9", 0.8, "support-bot")
    assert jail.api_key_hash is not None and "sk-secret" not in repr(security)
    inj = next(e for e in security if e.threat_type == "prompt_injection")
    assert (inj.user, inj.severity) == ("u-9", "high")
    # No explanation, comment or prompt text anywhere in what was forwarded.
    text = repr(quality) + repr(security)
    assert "made up" not in text and "ignore all" not in text and "great" not in text
    assert recorder.rows == 1  # only the LLM call is a row


async def test_logs_over_http_are_read_too(recorder: RecordingAggregator, make_sidecar: SidecarFactory) -> None:
    sc = await make_sidecar(aggregator_url=recorder.url)
    await asyncio.to_thread(_logs, HttpLogExporter(endpoint=f"http://127.0.0.1:{sc.ports()['http']}/v1/logs"), 1, 2)
    for _ in range(200):
        if any(b.quality for b in recorder.batches):
            break
        await asyncio.sleep(0.05)
    assert [q.name for b in recorder.batches for q in b.quality] == ["faithfulness"]


def test_wire_without_signals_is_unchanged_and_with_them_round_trips() -> None:
    batch = FeatureBatch.empty()
    plain = wire.encode(batch, sidecar="s", seq=1, created_unix_nano=5)
    assert set(msgpack.unpackb(plain)) == {"v", "sidecar", "seq", "created_unix_nano", "n", "cols", "anomalies"}
    q = QualityEvent(kind="evaluation", name="relevance", score=0.5, time_unix_nano=7, trace_id="ab")
    e = parse_security_event({"threat_type": "toxic", "timestamp": 2, "metadata": {"api_key": "k"}})
    body = wire.encode(batch, sidecar="s", seq=1, created_unix_nano=5, quality=[q], security=[e])
    back = wire.decode(body)
    assert back.quality == [q] and back.security == [e]
    assert back.security[0].api_key_hash == e.api_key_hash  # not hashed twice


@pytest.mark.parametrize(("field", "value", "message"), [
    ("quality", "x", "field 'quality' is not a list"),
    ("quality", [{"kind": "evaluation", "name": "r", "t": 1, "score": 2.0}], "quality[0] is invalid"),
    ("quality", [{"kind": "nope", "name": "r", "t": 1, "score": 0.2}], "quality[0] is invalid"),
    ("security", [{"time_unix_nano": 1}], "security[0] is invalid: threat_type"),
])
def test_bad_signal_fields_are_refused_naming_them(field: str, value: Any, message: str) -> None:
    m = msgpack.unpackb(wire.encode(FeatureBatch.empty(), sidecar="s", seq=1))
    m[field] = value
    with pytest.raises(wire.WireFormatError, match=message.replace("[", r"\[").replace("]", r"\]")):
        wire.decode(msgpack.packb(m))


def test_labels_and_names() -> None:
    assert normalise_name(" Answer Relevance ") == "answer_relevance"
    assert label_is_bad("Thumbs-Down") is True and label_is_bad("correct") is False
    worse = QualityEvent(kind="evaluation", name="hallucination", score=0.8, time_unix_nano=1)
    better = QualityEvent(kind="evaluation", name="groundedness", score=0.8, time_unix_nano=1)
    assert worse.is_bad() is True and better.is_bad() is False
    with pytest.raises(ValueError, match="score"):
        QualityEvent(kind="evaluation", name="x", score=math.nan, time_unix_nano=1)


def test_security_events_in_the_plans_schema() -> None:
    e = parse_security_event({
        "event_id": "ev-1", "timestamp": "2026-12-02T04:00:00Z", "threat_type": "Jailbreak", "severity": "high",
        "service_name": "chat", "user_id": "u1", "detection_method": "classifier", "confidence": 0.74,
        "action_taken": "blocked", "metadata": {"ip_address": "198.51.100.4", "api_key": "sk-live-1",
                                                 "attack_signature": "dan-v2", "prompt": "secret prompt"}})
    assert isinstance(e, SecurityEvent)
    assert (e.threat_type, e.service, e.user, e.attack_signature, e.time_unix_nano) == (
        "jailbreak", "chat", "u1", "dan-v2", 1_796_184_000 * 10**9)
    assert "sk-live-1" not in repr(e) and "secret prompt" not in repr(e)
    with pytest.raises(ValueError, match="severity"):
        parse_security_event({"threat_type": "toxic", "timestamp": 1, "severity": "urgent"})
    with pytest.raises(ValueError, match="confidence"):
        parse_security_event({"threat_type": "toxic", "timestamp": 1, "confidence": 3})
