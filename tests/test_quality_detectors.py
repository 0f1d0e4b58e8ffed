"""Quality detectors (score drop, bad labels, satisfaction, empty answers, content filter), the join of
quality events to their calls, and ``POST /api/v1/feedback``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aggregator.analysis.detectors import ContentFilterDetector, EmptyAnswerDetector
from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.detectors.quality_score import QualityScoreConfig, QualityScoreDetector
from aggregator.analysis.pipeline import restore, save
from aggregator.analysis.quality.call_index import ModelVersions, with_model_version
from aggregator.analysis.quality.consumer import QualityConsumer, parse_quality_settings
from sentinel.config import ConfigError
from sentinel.model import COLUMNS, FeatureBatch
from sentinel.quality import QualityEvent
from sentinel.wire import WireBatch
from tests.test_api_support import INGEST, start_api

NS = 1_000_000_000
T0 = 1_800_000_000 * NS


def evals(minute: int, n: int, rng: np.random.Generator, *, name: str = "hallucination", mean: float = 0.1,
          sd: float = 0.05, bad: float = 0.0, model: str = "gpt-4o") -> list[QualityEvent]:
    out = []
    for i in range(n):
        score = float(np.clip(rng.normal(mean, sd), 0, 1))
        label = ("hallucinated" if rng.random() < bad else "factual") if bad >= 0 else None
        out.append(QualityEvent(kind="evaluation", name=name, score=score, label=label, service="support",
                                model=model, trace_id=f"{minute:04d}{i:04d}",
                                time_unix_nano=T0 + minute * 60 * NS + i * NS // max(n, 1)))
    return out


def run(det: QualityScoreDetector, minutes: int, make: Any) -> list[tuple[int, Candidate]]:
    found = []
    for m in range(minutes):
        found += [(m, c) for c in det.update(make(m))]
    return found


def test_clean_evaluations_are_silent_and_a_hallucination_rise_is_a_quality_regression() -> None:
    rng = np.random.default_rng(1)
    det = QualityScoreDetector()
    clean = run(det, 60, lambda m: evals(m, 30, rng, bad=0.02))
    assert clean == []
    found = run(det, 10, lambda m: evals(60 + m, 30, rng, mean=0.4, bad=0.3))
    kinds = {(c.anomaly_type, c.detection_method, c.metric) for _, c in found}
    assert ("quality_regression", "cusum", "eval.hallucination") in kinds
    assert ("quality_regression", "binomial_share", "eval.hallucination.bad_share") in kinds
    first = min(m for m, _ in found)
    assert first <= 2  # within two buckets of the change (plus the one-bucket lateness)
    cusum = next(c for _, c in found if c.detection_method == "cusum")
    assert cusum.value > cusum.baseline and cusum.context["direction"] == "higher_is_worse"
    assert len([c for _, c in found if c.detection_method == "cusum"]) == 1  # one alert per excursion


def test_a_groundedness_drop_is_worse_downwards() -> None:
    rng = np.random.default_rng(2)
    det = QualityScoreDetector()
    assert run(det, 40, lambda m: evals(m, 20, rng, name="groundedness", mean=0.85, bad=-1)) == []
    found = run(det, 6, lambda m: evals(40 + m, 20, rng, name="groundedness", mean=0.6, bad=-1))
    assert [c.context["direction"] for _, c in found] == ["lower_is_worse"]
    assert run(QualityScoreDetector(), 1, lambda m: []) == []


def feedback(minute: int, n: int, rng: np.random.Generator, happy: float) -> list[QualityEvent]:
    return [QualityEvent(kind="feedback", name="user_feedback", label="thumbs_up" if rng.random() < happy
                         else "thumbs_down", service="support", model="gpt-4o",
                         time_unix_nano=T0 + minute * 60 * NS + i * NS) for i in range(n)]


@pytest.mark.parametrize(("base", "after", "alerts"), [
    (0.95, 0.95, False),  # clean
    (0.95, 0.70, True),  # under 85 % from a baseline above it
    (0.95, 0.88, False),  # a small dip above the floor
    (0.75, 0.72, False),  # a service whose normal is under the floor is not alerted for being there
    (0.75, 0.50, True),  # ... but is when it falls well under its own baseline
])
def test_satisfaction_against_the_floor_and_the_baseline(base: float, after: float, alerts: bool) -> None:
    rng = np.random.default_rng(3)
    det = QualityScoreDetector(QualityScoreConfig(bucket_s=60, min_events=20, z_threshold=3.0))
    assert run(det, 30, lambda m: feedback(m, 60, rng, base)) == []
    found = run(det, 10, lambda m: feedback(30 + m, 60, rng, after))
    assert bool(found) == alerts, found
    if alerts:
        c = found[0][1]
        assert (c.anomaly_type, c.metric) == ("satisfaction_drop", "satisfaction_rate")
        assert c.value < c.threshold < c.baseline


def test_state_round_trips_as_json() -> None:
    import json

    rng = np.random.default_rng(4)
    det = QualityScoreDetector()
    run(det, 20, lambda m: evals(m, 30, rng))
    again = QualityScoreDetector.from_state(json.loads(json.dumps(det.to_state(), allow_nan=False)))
    a = run(det, 8, lambda m: evals(20 + m, 30, np.random.default_rng(m), mean=0.5))
    b = run(again, 8, lambda m: evals(20 + m, 30, np.random.default_rng(m), mean=0.5))
    assert [c.to_dict() for _, c in a] == [c.to_dict() for _, c in b] and a


def rows(minute: int, n: int, *, out: float = 2.0, latency: float = 900.0, reason: str = "stop",
         response_model: str = "gpt-4o-2024-08-06", share: float = 0.0, rng: np.random.Generator) -> FeatureBatch:
    data = []
    for i in range(n):
        hit = rng.random() < share
        row: dict[str, Any] = dict.fromkeys(COLUMNS)
        row.update(time_unix_nano=T0 + minute * 60 * NS + i * NS // n, service="support", request_model="gpt-4o",
                   response_model=response_model, latency_ms=latency, output_tokens=(out if hit else 200.0),
                   is_error=False, finish_reason=reason if hit else "stop", trace_id=f"t{minute}-{i}",
                   span_id=f"s{minute}-{i}", user=f"u{i % 7}")
        data.append(tuple(row[c] for c in COLUMNS))
    return FeatureBatch.from_rows(data)


@pytest.mark.parametrize("kind", ["empty", "filter"])
def test_empty_answers_and_content_filter_surges(kind: str) -> None:
    rng = np.random.default_rng(5)
    det = EmptyAnswerDetector() if kind == "empty" else ContentFilterDetector()
    clean = [c for m in range(30) for c in det.update(rows(m, 100, rng=rng, share=0.01, out=0,
                                                             reason="content_filter"))]
    assert clean == []
    found = [c for m in range(30, 36) for c in det.update(rows(m, 100, rng=rng, share=0.4, out=0,
                                                                 reason="content_filter"))]
    assert [c.anomaly_type for c in found] == ["empty_answer" if kind == "empty" else "content_filter"]
    assert found[0].value > 0.3


def test_the_finish_reason_table_matches_a_per_row_reading() -> None:
    """reason_hits reads each distinct reason once; per row it must say what reading the row itself says,
    and the content-filter and finish-length candidates name their own type and metric."""
    from aggregator.analysis.detectors.content_filter import FILTER_REASONS
    from aggregator.analysis.detectors.finish_length import LIMIT_REASONS, FinishLengthDetector, reason_hits

    choices = [None, "stop", "length", "content_filter", "Safety", "stop,length", " refusal , stop", "max_tokens", ""]
    reasons = [choices[i] for i in np.random.default_rng(3).integers(0, len(choices), 500)]
    for wanted in (LIMIT_REASONS, FILTER_REASONS):
        has, hit = reason_hits(reasons, wanted)
        assert has.tolist() == [float(r is not None) for r in reasons]
        assert hit.tolist() == [float(r is not None and any(p.strip().lower() in wanted for p in r.split(",")))
                                for r in reasons]
        assert has.dtype == hit.dtype == np.float64
    assert [a.size for a in reason_hits([])] == [0, 0]
    assert (ContentFilterDetector().anomaly_type, ContentFilterDetector().metric) == ("content_filter",
                                                                                      "content_filter_share")
    assert (FinishLengthDetector().metric, EmptyAnswerDetector().metric) == ("finish_length_share",
                                                                             "empty_answer_share")


def test_fast_empty_answers_are_not_empty_answers() -> None:
    rng = np.random.default_rng(6)
    det = EmptyAnswerDetector()
    found = [c for m in range(40) for c in det.update(rows(m, 100, rng=rng, share=0.01 if m < 30 else 0.5,
                                                           out=0, latency=20.0))]
    assert found == []


def test_the_join_fills_service_and_model_and_alerts_name_the_model_version(tmp_path: Path) -> None:
    emitted: list[Candidate] = []
    svc = QualityConsumer(parse_quality_settings({"evaluations": {"min_events": 5, "warmup_buckets": 3}}),
                          tmp_path, on_candidates=emitted.extend)
    rng = np.random.default_rng(7)
    for m in range(12):
        version = "gpt-4o-2024-08-06" if m < 8 else "gpt-4o-2024-11-20"
        b = rows(m, 20, rng=rng, response_model=version)
        emitted += svc.consume(WireBatch(sidecar="s", seq=m, batch=b), arrival_ns=0)
        mean = 0.1 if m < 8 else 0.6
        # Log-record style: only the span id names the call.
        events = [QualityEvent(kind="evaluation", name="hallucination", score=float(np.clip(rng.normal(mean, 0.05),
                  0, 1)), span_id=f"s{m}-{i}", time_unix_nano=T0 + m * 60 * NS + i * NS) for i in range(20)]
        assert svc.submit(events) == 20
    assert svc.joined == 240 and svc.dropped_unjoined == 0
    assert emitted, "no quality regression"
    c = emitted[0]
    assert (c.service, c.model) == ("support", "gpt-4o")
    assert c.context["model_version"] == "gpt-4o-2024-11-20"
    assert c.context["previous_model_version"] == "gpt-4o-2024-08-06"
    series = svc.series("support")
    assert series and series[0]["eval_name"] == "hallucination" and len(series[0]["points"]) >= 10
    save(svc)
    again = QualityConsumer(svc.config, tmp_path)
    restore(again)
    assert again.evaluations.to_state() == svc.evaluations.to_state()


def test_unjoined_events_wait_then_are_dropped(tmp_path: Path) -> None:
    clock = [0]
    svc = QualityConsumer(parse_quality_settings({"join_wait_s": 10}), tmp_path,
                          clock=lambda: clock[0])
    e = QualityEvent(kind="feedback", name="user_feedback", label="thumbs_down", span_id="later", time_unix_nano=1)
    assert svc.submit([e]) == 0 and svc.pending == 1
    svc.consume(WireBatch(sidecar="s", seq=1, batch=FeatureBatch.from_rows([tuple(
        {"time_unix_nano": 1, "service": "a", "request_model": "m", "span_id": "later", "is_error": False}.get(c)
        for c in COLUMNS)])), arrival_ns=5 * NS)
    assert svc.pending == 0 and svc.joined == 1
    svc.submit([QualityEvent(kind="feedback", name="user_feedback", label="thumbs_down", span_id="never",
                             time_unix_nano=1)])
    clock[0] = 11 * NS
    svc.submit([])
    assert svc.pending == 0 and svc.dropped_unjoined == 1


def test_versions_are_added_only_to_answer_types() -> None:
    versions = ModelVersions()
    versions.note("s", "m", "v1", 1)
    versions.note("s", "m", "v2", 2)
    out: list[Candidate] = []
    emit = with_model_version(out.extend, versions)
    base = dict(service="s", model="m", detection_method="x", confidence=1.0, metric="x", value=1.0, baseline=0.0,
                threshold=0.5, deviation_sigma=1.0, window_start=0, window_end=1)
    emit([Candidate(anomaly_type="empty_answer", **base), Candidate(anomaly_type="latency_spike", **base)])
    assert out[0].context == {"model_version": "v2", "previous_model_version": "v1", "model_changed_at": 2}
    assert out[1].context == {}


@pytest.mark.parametrize(("settings", "message"), [
    ({"nope": 1}, "quality.nope: unknown setting"),
    ({"feedback": {"floor": 1.5}}, "quality.feedback.floor"),
    ({"evaluations": {"bucket_s": 0}}, "quality.evaluations.bucket_s"),
    ({"max_calls": 0}, "quality.max_calls"),
    ({"max_calls": "many"}, "quality.max_calls: "),
    ({"evaluations": {"bucket_s": "soon"}}, "quality.evaluations.bucket_s: not a duration"),
])
def test_bad_settings_name_their_key(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_quality_settings(settings)


async def test_feedback_api(tmp_path: Path) -> None:
    async with start_api(tmp_path) as h:
        assert h.quality is not None
        async with h.client(INGEST) as c:
            r = await c.post("/api/v1/feedback", json={"trace_id": "abc", "label": "thumbs_down", "service": "chat",
                                                       "comment": "the bot was rude to me, I am Jane Doe"})
            assert r.status_code == 202 and r.json() == {"status": "accepted", "accepted": 1, "joined": 1}
            r = await c.post("/api/v1/feedback", json={"feedback": [{"span_id": "s1", "rating": 4},
                                                                    {"trace_id": "t2", "score": 0.1}]})
            assert r.status_code == 202 and r.json()["accepted"] == 2
            for body, message in [({"label": "up"}, "trace_id or span_id"),
                                  ({"trace_id": "a"}, "score, rating or label"),
                                  ({"trace_id": "a", "score": 3}, "body.score"),
                                  ({"feedback": [{"trace_id": "a", "rating": 9}]}, r"feedback\[0\].rating")]:
                r = await c.post("/api/v1/feedback", json=body)
                assert r.status_code == 400, body
                assert re.search(message, r.json()["error"]), r.json()
            r = await c.get("/api/v1/services/chat/quality")
            assert r.status_code == 403  # the ingest token reads nothing
        async with h.client(None) as c:
            assert (await c.post("/api/v1/feedback", json={"trace_id": "a", "score": 1})).status_code == 401
        async with h.client() as c:
            r = await c.get("/api/v1/services/chat/quality")
            assert r.status_code == 200 and r.json()["service"] == "chat"
        assert "Jane" not in repr(h.quality.feedback.to_state())
        assert h.quality.received["feedback"] == 3


def test_quality_settings_follow_the_loaders_rules() -> None:
    c = parse_quality_settings({"join_wait_s": "2m", "evaluations": {"bucket_s": "5m"}, "feedback": None})
    assert c.join_wait_s == 120.0
    assert c.evaluations_config().bucket_s == 300.0 and c.feedback_config().bucket_s == 300.0  # FEEDBACK_DEFAULTS
