"""Regional detection: a one-region incident is alerted as regional, judged against its region's baseline."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest

from aggregator.alerting.store import AlertQuery, SQLiteAlertStore
from aggregator.analysis.baselines.store import BaselineConfig, BaselineStore
from aggregator.analysis.confirm import ConfirmConfig, LocalAnomalyConfirmer
from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.detectors.level_shift import LevelShiftDetector
from sentinel.model import COLUMNS, FeatureBatch, LocalAnomaly
from sentinel.wire import WireBatch
from tests.test_aggregator_detectors import MIN, T0, flush, make_batch, run
from tests.test_alert_manager import Clock, make

REGIONS = ("ap-south-1", "eu-west-1", "us-east-1")


def traffic(minutes: int, seed: int, *, factor: float, regions: Iterable[str], start: int = 30,
            end: int = 40) -> list[FeatureBatch]:
    """Calls over three regions (log-normal latency, sigma 0.5); latency x ``factor`` in ``regions``
    for minutes [start, end)."""
    rng = np.random.default_rng(seed)
    hit_regions = set(regions)
    out = []
    for m in range(minutes):
        n = int(rng.poisson(180))
        t = np.sort(T0 + m * MIN + rng.integers(0, MIN, n))
        region = rng.choice(REGIONS, size=n)
        latency = 2000 * rng.lognormal(0, 0.5, n)
        if start <= m < end:
            latency = latency * np.where(np.isin(region, list(hit_regions)), factor, 1.0)
        out.append(make_batch(t.tolist(), latency_ms=latency, region=region.tolist()))
    return out


def detect(batches: list[FeatureBatch]) -> list[Candidate]:
    det = LevelShiftDetector()
    return run(det, batches) + flush(det, T0 + (len(batches) + 5) * MIN)


@pytest.mark.parametrize("seed", [1, 2])
def test_latency_x3_in_one_region_is_alerted_as_regional(seed: int, store: SQLiteAlertStore) -> None:
    [c] = detect(traffic(60, seed, factor=3.0, regions=["ap-south-1"]))
    assert c.anomaly_type == "latency_spike" and c.context["region"] == "ap-south-1"
    assert c.context["regional"] is True and c.context["normal_regions"] == ["eu-west-1", "us-east-1"]
    m = make(store, Clock())
    m.emit([c])
    [alert] = store.query(AlertQuery(limit=10))[0]
    assert alert.labels["region"] == "ap-south-1"
    assert re.search(r"in ap-south-1 only \(latency_ms x(2\.[6-9]|3\.[0-4])\)", alert.summary), alert.summary


def test_a_fleet_wide_shift_is_not_called_regional(store: SQLiteAlertStore) -> None:
    found = detect(traffic(60, 1, factor=3.0, regions=REGIONS))
    assert {c.context["region"] for c in found} == set(REGIONS)
    assert not any(c.context["regional"] for c in found)
    m = make(store, Clock())
    m.emit(found)
    [alert] = store.query(AlertQuery(limit=10))[0]  # one alert (service and type), three regional members
    assert len(alert.members) == 3 and " only" not in alert.summary


# --- forwarded anomalies against the region's baseline ----------------------------------------------


def rows(n: int, region: str, median_ms: float, seed: int) -> list[tuple[Any, ...]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        row: dict[str, Any] = {"time_unix_nano": T0 + i * 10**9, "service": "chat", "request_model": "gpt-4o",
                               "operation": "chat", "region": region, "is_error": 0,
                               "latency_ms": float(median_ms * rng.lognormal(0, 0.3)), "span_id": f"{region}-{i}"}
        out.append(tuple(row.get(c) for c in COLUMNS))
    return out


def spike(span_id: str, value: float) -> LocalAnomaly:
    return LocalAnomaly(metric="latency_ms", value=value, baseline=100.0, deviation=30.0, threshold=200.0,
                        sigma=9.0, method="zscore", service="chat", model="gpt-4o", operation="chat",
                        trace_id="t" * 32, span_id=span_id, time_unix_nano=T0 + 10**12)


def confirmer(min_count: int = 200) -> tuple[LocalAnomalyConfirmer, list[Candidate]]:
    store = BaselineStore(BaselineConfig())
    # A fast region (100 ms) beside a slow one (1 s): the fleet's p99 is the slow region's tail.
    store.update(FeatureBatch.from_rows(rows(1000, "fast", 100.0, 1) + rows(1000, "slow", 1000.0, 2)))
    c = LocalAnomalyConfirmer(ConfirmConfig(min_global_count=min_count), store)
    emitted = _EMITTED[id(c)] = []
    return c, emitted


#: What each confirmer's consume returned, by confirmer.
_EMITTED: dict[int, list[Candidate]] = {}


def feed(c: LocalAnomalyConfirmer, anomaly: LocalAnomaly, row_region: str | None) -> None:
    batch_rows = rows(1, row_region, 800.0, 3) if row_region else []
    if batch_rows:  # the anomaly's own call, in its batch: that is where its region is read
        batch_rows = [tuple(anomaly.span_id if col == "span_id" else v for col, v in zip(COLUMNS, batch_rows[0],
                                                                                            strict=True))]
    _EMITTED[id(c)] += c.consume(WireBatch(sidecar="sc", seq=1, batch=FeatureBatch.from_rows(batch_rows),
                                           anomalies=[anomaly]), arrival_ns=T0 + 10**12)


def test_a_spike_in_a_fast_region_is_confirmed_by_its_regional_baseline() -> None:
    c, emitted = confirmer()
    feed(c, spike("s-1", 800.0), "fast")  # 8x the fast region's level, inside the fleet's range
    [cand] = emitted
    assert cand.context["region"] == "fast" and cand.context["baseline_scope"] == "region"
    assert cand.baseline == pytest.approx(100.0, rel=0.1) and cand.detection_method == "local_zscore+global_p99"


def test_without_a_region_or_its_history_the_global_baseline_judges() -> None:
    c, emitted = confirmer()
    feed(c, spike("s-2", 800.0), None)  # no row for the anomaly: region unknown -> global p99 (~1.8 s)
    assert emitted == []
    c, emitted = confirmer(min_count=1500)  # the region (1,000 calls) has too little history: global (2,000)
    feed(c, spike("s-3", 800.0), "fast")
    assert emitted == []


def test_a_slow_regions_normal_is_not_an_incident() -> None:
    c, emitted = confirmer()
    feed(c, spike("s-4", 1400.0), "slow")
    assert emitted == []
