"""The app of the interop suite: the real ``openai`` client with one instrumentation family.

Run in that family's venv (``tests/interop/venvs.py``), never imported by the project::

    python client_app.py FAMILY PROTOCOL OTLP_ENDPOINT OPENAI_BASE_URL OUT.json

PROTOCOL is ``grpc``, ``http/protobuf`` or ``http/json``. The OpenTelemetry Python SDK has no
OTLP/JSON exporter, so ``http/json`` encodes the SDK's own OTLP request (its protobuf encoder) in
the OTLP/JSON mapping (hex ids) and posts it, as the OTLP specification describes.

With ``INTEROP_SIGNALS=metrics`` the app exports no spans, only the instrumentation's metrics
(``grpc`` or ``http/protobuf``; one export, at the end), as an app that sends only metrics.

With ``INTEROP_SPANS_OUT=path`` every span is also written there as JSON (the SDK's console
exporter), which is how the layouts in ``tests/test_extract_families.py`` were taken.

Each call runs inside a parent span of the app's own (not an LLM span), whose trace id ties the
sidecar's row to the call. OUT.json lists, per call, what the client did and saw: operation,
request model, user, stream, the response's model, token counts and finish reason, the error
class, and for streams the time from the call to the first chunk the client received.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import urllib.request
from typing import Any

SECRET = "SECRET-PROMPT-4111"  # in every prompt: it must never reach a row
API_KEY = "sk-interop-SECRET-KEY-0123456789"


def _exporter(protocol: str, endpoint: str) -> Any:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter(endpoint=endpoint, insecure=True)
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
        return HttpExporter(endpoint=f"{endpoint}/v1/traces")
    if protocol == "http/json":
        return _JsonExporter(f"{endpoint}/v1/traces")
    raise SystemExit(f"unknown protocol {protocol!r}")


class _JsonExporter:
    """OTLP/HTTP with the JSON encoding, from the SDK's own OTLP encoder."""

    def __init__(self, url: str) -> None:
        self._url = url

    def export(self, spans: Any) -> Any:
        import base64

        from google.protobuf.json_format import MessageToDict
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
        from opentelemetry.sdk.trace.export import SpanExportResult

        doc = MessageToDict(encode_spans(spans))

        def hexify(d: dict[str, Any], *keys: str) -> None:
            for k in keys:
                if k in d:
                    d[k] = base64.b64decode(d[k]).hex()

        for rs in doc.get("resourceSpans", []):
            for ss in rs.get("scopeSpans", []):
                for sp in ss.get("spans", []):
                    hexify(sp, "traceId", "spanId", "parentSpanId")
                    for link in sp.get("links", []):
                        hexify(link, "traceId", "spanId")
        req = urllib.request.Request(self._url, data=json.dumps(doc).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            ok = resp.status == 200
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _meter_provider(protocol: str, endpoint: str, resource: Any) -> Any:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        exporter = OTLPMetricExporter(endpoint=endpoint, insecure=True)
    elif protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
        exporter = HttpMetricExporter(endpoint=f"{endpoint}/v1/metrics")
    else:
        raise SystemExit(f"metrics over {protocol!r} are not supported here")
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    return MeterProvider(metric_readers=[reader], resource=resource)


def _instrument(family: str, provider: Any, meters: Any = None) -> None:
    if family == "openllmetry":
        from opentelemetry.instrumentation.openai import OpenAIInstrumentor
        OpenAIInstrumentor().instrument(tracer_provider=provider, meter_provider=meters)
    elif family == "openinference":
        from openinference.instrumentation.openai import OpenAIInstrumentor as OIInstrumentor
        OIInstrumentor().instrument(tracer_provider=provider)
    elif family == "genai-v2":
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor as V2Instrumentor
        V2Instrumentor().instrument(tracer_provider=provider, meter_provider=meters)
    elif family == "openlit":
        import openlit
        # An empty price table: what OpenLIT has when it cannot fetch its own (it then writes cost 0).
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            f.write("{}")
        openlit.init(application_name="interop-openlit", pricing_json=f.name, disable_metrics=True,
                     collect_gpu_stats=False)
    else:
        raise SystemExit(f"unknown family {family!r}")


def _messages(n_words: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": "be brief"},
            {"role": "user", "content": " ".join([SECRET] + ["w"] * (n_words - 3))}]


#: (id, operation, model, stream, user, max_tokens, fault, prompt words) of each call, in order.
CALLS: tuple[tuple[str, str, str, bool, str | None, int | None, str, int], ...] = (
    ("chat", "chat", "gpt-4o-mini", False, "u-chat", None, "", 12),
    ("stream", "chat", "gpt-4o-mini", True, "u-stream", None, "first:150", 9),
    ("stream-slow", "chat", "gpt-4o-mini", True, None, None, "first:400", 9),
    ("length", "chat", "gpt-4o", False, None, 3, "", 6),
    ("embed", "embeddings", "text-embedding-3-small", False, "u-embed", None, "", 5),
    ("e429", "chat", "gpt-4o-mini", False, "u-429", None, "429", 6),
    ("e500", "chat", "gpt-4o-mini", False, None, None, "500", 6),
    ("timeout", "chat", "gpt-4o-mini", False, None, None, "slow", 6),
)


def main(family: str, protocol: str, endpoint: str, base_url: str, out_path: str) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    resource = Resource.create({"service.name": f"interop-{family}"})
    provider = TracerProvider(resource=resource)
    meters = None
    if os.environ.get("INTEROP_SIGNALS") == "metrics":
        meters = _meter_provider(protocol, endpoint, resource)
    else:
        # Exported as each span ends, so no export thread competes with a call being timed.
        provider.add_span_processor(SimpleSpanProcessor(_exporter(protocol, endpoint)))
    spans_out = os.environ.get("INTEROP_SPANS_OUT")
    if spans_out:  # a readable copy of every span, to see a family's attribute layout
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter
        spans_file = open(spans_out, "w")  # noqa: SIM115 - open until the process exits
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=spans_file)))
    trace.set_tracer_provider(provider)
    _instrument(family, provider, meters)

    import openai

    client = openai.OpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, timeout=1.0)
    tracer = trace.get_tracer("interop-app")
    calls = []
    for call_id, operation, model, stream, user, max_tokens, fault, n_words in CALLS:
        headers = {}
        if fault.startswith("first:"):
            headers["x-fake-first-chunk-ms"] = fault.split(":", 1)[1]
        elif fault:
            headers["x-fake-fault"] = fault
        seen: dict[str, Any] = {"id": call_id, "operation": operation, "model": model, "stream": stream,
                                "user": user, "error": None, "response_model": None, "input_tokens": None,
                                "output_tokens": None, "finish_reason": None, "ttft_ms": None,
                                "first_chunk_ms": float(fault.split(":", 1)[1]) if fault.startswith("first:") else None}
        with tracer.start_as_current_span(f"app {call_id}") as parent:
            seen["trace_id"] = format(parent.get_span_context().trace_id, "032x")
            kwargs: dict[str, Any] = {"model": model, "extra_headers": headers}
            if user is not None:
                kwargs["user"] = user
            seen["start_unix_ns"] = time.time_ns()
            t0 = time.perf_counter()
            try:
                if operation == "embeddings":
                    er = client.embeddings.create(input=f"{SECRET} a b c", **kwargs)
                    seen.update(response_model=er.model, input_tokens=er.usage.prompt_tokens)
                elif stream:
                    chunks = client.chat.completions.create(messages=_messages(n_words), stream=True,
                                                            stream_options={"include_usage": True}, **kwargs)
                    for chunk in chunks:
                        if seen["ttft_ms"] is None:
                            seen["ttft_ms"] = (time.perf_counter() - t0) * 1000.0
                        seen["response_model"] = chunk.model
                        if chunk.choices and chunk.choices[0].finish_reason:
                            seen["finish_reason"] = chunk.choices[0].finish_reason
                        if chunk.usage is not None:
                            seen.update(input_tokens=chunk.usage.prompt_tokens,
                                        output_tokens=chunk.usage.completion_tokens)
                else:
                    if max_tokens is not None:
                        kwargs["max_tokens"] = max_tokens
                    cr = client.chat.completions.create(messages=_messages(n_words), **kwargs)
                    assert cr.usage is not None
                    seen.update(response_model=cr.model, input_tokens=cr.usage.prompt_tokens,
                                output_tokens=cr.usage.completion_tokens, finish_reason=cr.choices[0].finish_reason)
            except openai.OpenAIError as e:
                seen["error"] = type(e).__name__
            seen["client_ms"] = (time.perf_counter() - t0) * 1000.0
        calls.append(seen)
    provider.force_flush()
    provider.shutdown()
    if meters is not None:
        meters.force_flush()
        meters.shutdown()
    with open(out_path, "w") as f:
        json.dump({"family": family, "protocol": protocol, "calls": calls}, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) != 6:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
