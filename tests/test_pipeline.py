"""The trace pipeline's bounds: the receive queue refuses rather than grows."""

from __future__ import annotations

import random

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
