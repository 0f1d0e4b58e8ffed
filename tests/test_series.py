"""SeriesConsumer: per-service minute buckets, health windows, bounds, save and restore."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from aggregator.analysis.pipeline import restore, save
from aggregator.analysis.series import FILE_NAME, SeriesConsumer
from tests.test_api_support import S, batch, traffic

T0 = 1_795_428_000 * S  # a minute boundary


def test_buckets_per_service_and_minute(tmp_path: Path) -> None:
    s = SeriesConsumer(tmp_path)
    rows = traffic("chat", T0, 120, error_every=4) + traffic("search", T0 + 30 * S, 30, latency_ms=10.0)
    rows.append({"time_unix_nano": T0, "service": None, "latency_ms": 5.0})  # no service: not charted
    rows.append({"time_unix_nano": T0 + 5 * S, "service": "chat", "latency_ms": None})  # no latency: a call
    s.consume(batch(rows), arrival_ns=T0 + 120 * S)
    assert s.services() == ["chat", "search"]
    assert s.dropped_rows == 1
    chat = s.series("chat", T0, T0 + 120 * S)
    assert chat is not None and chat["step_s"] == 60
    p0, p1 = chat["points"]
    assert p0["t"] == T0 // S and p0["calls"] == 61 and p0["errors"] == 15
    assert p0["latency_ms_mean"] == pytest.approx(np.mean(np.arange(100, 160)))
    assert p0["latency_ms_max"] == 159.0
    assert p1["calls"] == 60 and p1["latency_ms_max"] == 219.0
    assert p0["input_tokens"] == 6000 and p0["output_tokens"] == 3000  # the row without tokens adds none
    search = s.series("search", T0, T0 + 120 * S)
    assert search is not None
    assert [p["calls"] for p in search["points"]] == [30, 0]
    assert s.series("nobody") is None and s.health_window("nobody") is None


def test_batches_add_up_in_the_same_bucket(tmp_path: Path) -> None:
    s = SeriesConsumer(tmp_path)
    s.consume(batch(traffic("chat", T0, 10, latency_ms=100.0)), arrival_ns=T0)
    s.consume(batch(traffic("chat", T0 + 10 * S, 10, latency_ms=500.0)), arrival_ns=T0)
    (p,) = s.series("chat", T0, T0 + 60 * S)["points"]  # type: ignore[index]
    assert p["calls"] == 20 and p["latency_ms_max"] == 509.0
    h = s.health_window("chat")
    assert h is not None and h["calls"] == 20
    lat = np.r_[np.arange(100, 110), np.arange(500, 510)]
    assert h["latency_ms_p50"] == pytest.approx(np.quantile(lat, 0.5, method="lower"), rel=0.03)
    assert h["latency_ms_p95"] == pytest.approx(np.quantile(lat, 0.95), rel=0.03)


def test_health_quantiles_within_the_relative_accuracy(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    latency = rng.lognormal(6, 1, 3000)
    rows = [{"time_unix_nano": T0 + i * 100_000_000, "service": "chat", "latency_ms": float(x)}
            for i, x in enumerate(latency)]
    s = SeriesConsumer(tmp_path)
    s.consume(batch(rows), arrival_ns=T0 + 300 * S)
    h = s.health_window("chat", window_s=300)
    assert h is not None and h["calls"] == 3000
    for q, key in ((0.5, "latency_ms_p50"), (0.95, "latency_ms_p95")):
        assert h[key] == pytest.approx(np.quantile(latency, q), rel=0.03)


def test_window_follows_the_services_own_event_time(tmp_path: Path) -> None:
    s = SeriesConsumer(tmp_path)
    old = T0 - 30 * 86400 * S  # a replay from a month ago
    s.consume(batch(traffic("chat", old, 600)), arrival_ns=T0)
    h = s.health_window("chat", window_s=300)
    assert h is not None and h["calls"] == 300 and h["last_seen_ns"] == old + 599 * S
    # An explicit end: the five minutes up to it.
    h = s.health_window("chat", now_ns=old + 119 * S, window_s=300)
    assert h is not None and h["calls"] == 120
    assert h["tokens_per_min"] == pytest.approx(120 * 150 / 119 * 60)  # a service younger than the window


def test_rows_far_in_the_future_or_beyond_retention_are_dropped(tmp_path: Path) -> None:
    s = SeriesConsumer(tmp_path, retention_s=3600, max_future_s=60)
    s.consume(batch(traffic("chat", T0 + 3600 * S, 1)), arrival_ns=T0)  # an hour ahead of arrival
    assert s.services() == [] and s.dropped_rows == 1
    s.consume(batch(traffic("chat", T0, 1)), arrival_ns=T0)
    s.consume(batch(traffic("chat", T0 - 2 * 3600 * S, 1)), arrival_ns=T0)  # older than the retention
    assert s.dropped_rows == 2
    points = s.series("chat", T0 - 3 * 3600 * S, T0 + 60 * S)["points"]  # type: ignore[index]
    assert len(points) == 60  # at most the retention
    assert sum(p["calls"] for p in points) == 1


def test_the_ring_reuses_slots_of_expired_buckets(tmp_path: Path) -> None:
    s = SeriesConsumer(tmp_path, retention_s=600)  # 10 slots
    s.consume(batch(traffic("chat", T0, 1)), arrival_ns=T0)
    s.consume(batch(traffic("chat", T0 + 600 * S, 1)), arrival_ns=T0 + 600 * S)  # the same slot, 10 minutes on
    points = s.series("chat", T0, T0 + 660 * S)["points"]  # type: ignore[index]
    assert [p["t"] for p in points if p["calls"]] == [(T0 + 600 * S) // S]


def test_services_are_bounded(tmp_path: Path) -> None:
    s = SeriesConsumer(tmp_path, max_services=2)
    for i, name in enumerate(("a", "b", "c")):
        s.consume(batch(traffic(name, T0 + i * S, 1)), arrival_ns=T0)
    assert s.services() == ["b", "c"]
    # Silent (by arrival) for longer than the retention: dropped.
    s.consume(batch(traffic("c", T0 + 25 * 3600 * S, 1)), arrival_ns=T0 + 25 * 3600 * S)
    assert s.services() == ["c"]


def test_save_and_restore(tmp_path: Path) -> None:
    s = SeriesConsumer(tmp_path)
    s.consume(batch(traffic("chat", T0, 300, error_every=3) + traffic("search", T0, 10)), arrival_ns=T0 + 300 * S)
    s.consume(batch([{"time_unix_nano": T0 + 400 * S, "service": "chat", "latency_ms": None}]),
              arrival_ns=T0 + 400 * S)  # a bucket without latencies (min/max infinite) must survive JSON
    save(s)
    doc = json.loads((tmp_path / FILE_NAME).read_text())
    assert doc["version"] == 1 and set(doc["services"]) == {"chat", "search"}
    restored = SeriesConsumer(tmp_path)
    restore(restored)
    assert restored.services() == ["chat", "search"]
    for name in ("chat", "search"):
        assert restored.series(name) == s.series(name)
        assert restored.health_window(name, now_ns=T0 + 299 * S) == s.health_window(name, now_ns=T0 + 299 * S)
    save(s)  # unchanged: nothing written (no error either)


def test_a_damaged_or_incompatible_file_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_text("{not json")
    s = SeriesConsumer(tmp_path)
    restore(s)
    assert s.services() == [] and (tmp_path / "series.damaged").exists()
    other = SeriesConsumer(tmp_path)
    other.consume(batch(traffic("chat", T0, 1)), arrival_ns=T0)
    save(other)
    restore(SeriesConsumer(tmp_path, step_s=30))  # another step: not used
    assert not (tmp_path / FILE_NAME).exists()


def test_settings_are_checked(tmp_path: Path) -> None:
    for kw in ({"step_s": 0}, {"retention_s": 10}, {"max_services": 0}, {"relative_accuracy": 1.0}):
        with pytest.raises(ValueError, match="series"):
            SeriesConsumer(tmp_path, **kw)


def test_empty_window_has_no_quantiles(tmp_path: Path) -> None:
    s = SeriesConsumer(tmp_path)
    s.consume(batch(traffic("chat", T0, 5)), arrival_ns=T0)
    h = s.health_window("chat", now_ns=T0 + 3600 * S)
    assert h is not None and h["calls"] == 0 and h["latency_ms_p50"] is None and h["error_rate"] == 0.0
    assert math.isfinite(h["tokens_per_min"])
