"""Forwarder: backoff, Retry-After, bearer token and TLS with a CA file."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import httpx
import pytest
import trustme

from loadtest.recorder import RecordingAggregator
from sentinel.retry import backoff_s
from tests.conftest import SidecarFactory
from tests.test_lifecycle import _send


@pytest.mark.parametrize(("attempt", "retry_after", "low", "high"), [
    (0, None, 0.08, 0.12),
    (3, None, 0.64, 0.96),
    (20, None, 24.0, 30.0),      # capped at max_backoff_s (±20 % jitter below the cap)
    (0, 5.0, 5.0, 5.0),          # the server's hint wins when longer
    (0, 100.0, 30.0, 30.0),      # but never beyond the cap
])
def test_backoff(attempt: int, retry_after: float | None, low: float, high: float) -> None:
    for _ in range(50):
        assert low <= backoff_s(attempt, 30.0, retry_after_s=retry_after) <= high


async def test_bearer_token_and_https_with_ca_file(tmp_path: Path, make_sidecar: SidecarFactory) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    recorder = RecordingAggregator(token="s3cret")
    await recorder.start(ssl_context=server_ctx)
    try:
        assert recorder.url.startswith("https://")
        sc = await make_sidecar(aggregator_url=recorder.url, ca_file=str(ca_file), token="s3cret")
        await _send(sc, 1, 7)
        assert await recorder.wait_rows(7) == 7
        # Without the CA the same aggregator is not trusted: nothing arrives, retries are counted.
        sc2 = await make_sidecar(aggregator_url=recorder.url, token="s3cret", sidecar_id="untrusting")
        await _send(sc2, 1, 3)
        for _ in range(100):
            if sum(s.value for m in sc2.metrics.forward_retries.collect() for s in m.samples
                   if s.name.endswith("_total")) >= 1:
                break
            await asyncio.sleep(0.02)
        assert recorder.rows == 7
    finally:
        await recorder.stop()


async def test_wrong_token_is_retried_not_dropped(recorder: RecordingAggregator, make_sidecar: SidecarFactory) -> None:
    recorder.token = "right"
    sc = await make_sidecar(aggregator_url=recorder.url, token="wrong")
    await _send(sc, 1, 5)
    for _ in range(100):
        if recorder.requests >= 2:
            break
        await asyncio.sleep(0.02)
    assert recorder.rows == 0
    assert sc.metrics.forward_retries.labels("401")._value.get() >= 1
    assert sc.metrics.dropped_rows.labels("rejected")._value.get() == 0


def test_retry_after_header_parsing() -> None:
    from sentinel.retry import retry_after as _retry_after

    assert _retry_after(httpx.Response(503, headers={"Retry-After": "7"})) == 7.0
    assert _retry_after(httpx.Response(503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})) is None
    assert _retry_after(httpx.Response(503)) is None
