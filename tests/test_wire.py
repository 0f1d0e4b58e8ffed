"""The wire format round-trips and refuses bad bodies with a message naming the problem."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest

from sentinel import wire
from sentinel.model import COLUMNS, FeatureBatch, LocalAnomaly

ROW = (1_700_000_000_000_000_000, "svc", "ns", None, "eu", "chat", "openai", "gpt-4o", "gpt-4o-x", 1234.5, None,
       100.0, 20.0, 16.2, 0.0004, 1, "timeout", "stop", None, None, "ab" * 16, "cd" * 8)


def _anomaly() -> LocalAnomaly:
    return LocalAnomaly(metric="latency_ms", value=9000.0, baseline=1000.0, deviation=100.0, threshold=1400.0,
                        sigma=80.0, method="zscore", service="svc", model="gpt-4o", operation="chat",
                        trace_id="ab" * 16, span_id="cd" * 8, time_unix_nano=5)


def test_round_trip() -> None:
    batch = FeatureBatch.from_rows([ROW, (*ROW[:1], "svc2", *ROW[2:])])
    body = wire.encode(batch, sidecar="s", seq=42, anomalies=[_anomaly()], created_unix_nano=7)
    out = wire.decode(body)
    assert (out.sidecar, out.seq, out.created_unix_nano, out.version) == ("s", 42, 7, 1)
    assert out.batch.n == 2
    r = out.batch.row(0)
    assert r["latency_ms"] == 1234.5 and r["ttft_ms"] is None and r["pod"] is None
    assert out.batch.strings["service"] == ["svc", "svc2"]
    assert out.anomalies == [_anomaly()]
    assert list(out.batch.row(0)) == list(COLUMNS)


def test_empty_batch_round_trips() -> None:
    out = wire.decode(wire.encode(FeatureBatch.empty(), sidecar="s", seq=0))
    assert out.batch.n == 0


def _body(**changes: object) -> bytes:
    m = msgpack.unpackb(wire.encode(FeatureBatch.from_rows([ROW]), sidecar="s", seq=1), raw=False)
    for k, v in changes.items():
        if v is None:
            del m[k]
        else:
            m[k] = v
    return bytes(msgpack.packb(m, use_bin_type=True))


@pytest.mark.parametrize(("body", "needle"), [
    (b"\xc1", "not valid msgpack"),
    (msgpack.packb([1, 2]), "expected a map"),
    (_body(v=2), "unsupported wire version 2"),
    (_body(sidecar=None), "missing field 'sidecar'"),
    (_body(seq=-1), "'seq' is negative"),
    (_body(n=2), "expected 2 values"),
    (_body(cols={"time_unix_nano": {"dtype": "<i8", "data": b"\0" * 8}}), "missing column"),
    (_body(anomalies=[{"metric": "x"}]), "anomalies[0] is missing field"),
    (_body(seq="1"), "'seq' has type str"),
    (b"\x91" * 5000 + b"\xc0", "not valid msgpack: nested too deeply"),  # issue 15, case 17: was empty
    (b"\x81\xa1a" * 5000 + b"\xc0", "not valid msgpack: nested too deeply"),
])
def test_bad_bodies_are_refused_with_a_reason(body: bytes, needle: str) -> None:
    with pytest.raises(wire.WireFormatError) as e:
        wire.decode(body)
    assert needle in str(e.value)


def test_code_outside_dictionary() -> None:
    m = msgpack.unpackb(wire.encode(FeatureBatch.from_rows([ROW]), sidecar="s", seq=1), raw=False)
    m["cols"]["service"]["codes"]["data"] = np.array([5], dtype="<i4").tobytes()
    with pytest.raises(wire.WireFormatError, match="outside its dictionary"):
        wire.decode(msgpack.packb(m, use_bin_type=True))


def test_nan_survives() -> None:
    out = wire.decode(wire.encode(FeatureBatch.from_rows([ROW]), sidecar="s", seq=1))
    assert math.isnan(out.batch.numeric["ttft_ms"][0])


def _is_error(value: int) -> bytes:
    m = msgpack.unpackb(wire.encode(FeatureBatch.from_rows([ROW, ROW]), sidecar="s", seq=1), raw=False)
    m["cols"]["is_error"]["data"] = np.array([0, value], dtype="|u1").tobytes()
    return bytes(msgpack.packb(m, use_bin_type=True))


def test_is_error_other_than_0_or_1_is_refused_naming_the_row() -> None:
    """Issue 15, case 15: is_error=255 was accepted and health showed error_rate 255.0."""
    with pytest.raises(wire.WireFormatError, match=r"column 'is_error' holds 255 at row 1, must be 0 or 1"):
        wire.decode(_is_error(255))
    assert wire.decode(_is_error(1)).batch.numeric["is_error"].tolist() == [0, 1]


def test_negative_counts_durations_and_costs_are_read_as_missing() -> None:
    m = msgpack.unpackb(wire.encode(FeatureBatch.from_rows([ROW]), sidecar="s", seq=1), raw=False)
    for name in ("latency_ms", "ttft_ms", "input_tokens", "output_tokens", "tokens_per_s", "cost_usd"):
        m["cols"][name]["data"] = np.array([-1.0], dtype="<f8").tobytes()
    got = wire.decode(bytes(msgpack.packb(m, use_bin_type=True))).batch.numeric
    assert all(np.isnan(got[name][0]) for name in ("latency_ms", "ttft_ms", "input_tokens", "output_tokens",
                                                   "tokens_per_s", "cost_usd"))
