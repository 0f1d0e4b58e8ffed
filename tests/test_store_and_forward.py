"""Store-and-forward across SIGKILL: every acknowledged span's row reaches the aggregator.

The sidecar runs as a real process (``sentinel sidecar``); the client is a plain gRPC channel so
that "acknowledged" means exactly "the Export call returned OK".
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest

from loadtest.recorder import RecordingAggregator
from loadtest.spans import build_trace_request
from tests.conftest import free_port

# Real processes killed with SIGKILL (the system tier, `make test-system`).
pytestmark = pytest.mark.system

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def _start_sidecar(spool: Path, agg_port: int, grpc_port: int, metrics_port: int) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "sentinel.cli", "sidecar",
        "--mode", "store-and-forward",
        "--spool-directory", str(spool),
        "--sidecar-id", "edge-1",
        "--aggregator-url", f"http://127.0.0.1:{agg_port}",
        "--grpc-listen", f"127.0.0.1:{grpc_port}",
        "--http-listen", "127.0.0.1:0",
        "--metrics-listen", f"127.0.0.1:{metrics_port}",
        "--retry-max-backoff-s", "0.3",
        "--batch-timeout-s", "0.05",
    ]
    log = spool.parent / "sidecar.log"
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=out)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"sidecar exited: {log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{metrics_port}/readyz", timeout=0.5).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("sidecar did not become ready")


def _export(grpc_port: int, requests: int, spans: int) -> set[str]:
    """Export ``requests`` requests; returns the span ids of those acknowledged."""
    acked: set[str] = set()
    rng = random.Random(11)
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        call = channel.unary_unary(EXPORT)
        for i in range(requests):
            req = build_trace_request(spans, rng=rng, start_unix_nano=1_760_000_000_000_000_000 + i * 10**10)
            call(req.SerializeToString(), timeout=10)
            acked.update(
                s.span_id.hex() for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans
            )
    return acked


async def test_acknowledged_rows_survive_sigkill_with_aggregator_down(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    agg_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    proc = _start_sidecar(spool, agg_port, grpc_port, metrics_port)
    try:
        # Nothing listens on agg_port: the aggregator is down while spans are acknowledged.
        acked = _export(grpc_port, requests=20, spans=50)
        assert len(acked) == 1000
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert any(spool.iterdir()), "the spool holds the acknowledged batches"

    recorder = RecordingAggregator()
    await recorder.start(port=agg_port)
    proc = _start_sidecar(spool, agg_port, grpc_port, metrics_port)
    try:
        assert await recorder.wait_rows(1000, timeout_s=30) == 1000
        got = [sid for b in recorder.batches for sid in b.batch.strings["span_id"]]
        assert len(got) == len(set(got)) == 1000
        assert set(got) == acked
        assert {b.sidecar for b in recorder.batches} == {"edge-1"}
        seqs = [b.seq for b in recorder.batches]
        assert seqs == sorted(seqs), "the spool replays in order"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        await recorder.stop()
