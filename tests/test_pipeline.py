"""The trace pipeline's bounds: the receive queue refuses rather than grows."""

from __future__ import annotations

import random
import weakref
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from loadtest.spans import build_trace_request
from sidecar.detectors.local import LocalDetector
from sidecar.extract import ExtractConfig, Extractor
from sidecar.forward_queue import ForwardQueue
from sidecar.metrics import SidecarMetrics
from sidecar.otlp_lite import parse_traces
from sidecar.pipeline import Overloaded, SeqSource, TracePipeline


def _pipeline(max_bytes: int) -> tuple[TracePipeline, SidecarMetrics]:
    metrics = SidecarMetrics(CollectorRegistry())
    queue = ForwardQueue(max_batches=8, spool=None, metrics=metrics, enabled=False)
    p = TracePipeline(extractor=Extractor(ExtractConfig()), detector=LocalDetector(), queue=queue,
                      metrics=metrics, sidecar_id="t", seq=SeqSource(), durable=False, batch_max_rows=100,
                      batch_timeout_s=0.05, receive_queue_max_bytes=max_bytes)
    p.start()
    return p, metrics


async def test_receive_queue_full_is_overloaded_then_drains() -> None:
    raw = build_trace_request(20, rng=random.Random(1)).SerializeToString()
    p, metrics = _pipeline(max_bytes=len(raw) * 2)
    # consume_traces does not yield in sidecar mode, so the worker has not run between these.
    await p.consume_traces(parse_traces(raw), len(raw))
    await p.consume_traces(parse_traces(raw), len(raw))
    with pytest.raises(Overloaded, match="receive queue full"):
        await p.consume_traces(parse_traces(raw), len(raw))
    await p.flush()
    assert p.queued_bytes == 0
    await p.consume_traces(parse_traces(raw), len(raw))  # room again
    await p.shutdown()
    await p.shutdown()
    assert metrics.llm_calls._value.get() == 60
    with pytest.raises(Overloaded, match="shutting down"):
        await p.consume_traces(parse_traces(raw), len(raw))


async def test_a_single_request_larger_than_the_bound_is_taken_when_idle() -> None:
    raw = build_trace_request(20, rng=random.Random(1)).SerializeToString()
    p, metrics = _pipeline(max_bytes=10)
    await p.consume_traces(parse_traces(raw), len(raw))
    await p.shutdown()
    assert metrics.llm_calls._value.get() == 20


class _Request:
    """A parsed request that can be watched with a weak reference (upb messages cannot)."""

    def __init__(self, raw: bytes) -> None:
        self.resource_spans = parse_traces(raw).resource_spans


async def test_a_request_is_let_go_once_extracted() -> None:
    # Issue 16: the parsed request (its protobuf arena) must not be held while detection and
    # batching allocate theirs, nor by the idle worker afterwards: both raised the sidecar's RSS.
    raw = build_trace_request(20, rng=random.Random(1)).SerializeToString()
    p, metrics = _pipeline(max_bytes=len(raw) * 4)
    request = _Request(raw)
    watch = weakref.ref(request)
    alive_at_detection: list[bool] = []
    detect = p._detector.process

    def process(batch: Any) -> Any:
        alive_at_detection.append(watch() is not None)
        return detect(batch)

    p._detector.process = process  # type: ignore[method-assign]
    await p.consume_traces(request, len(raw))
    del request
    await p.flush()
    assert alive_at_detection == [False]
    assert watch() is None  # the idle worker holds nothing of it either
    assert metrics.llm_calls._value.get() == 20
    await p.shutdown()
