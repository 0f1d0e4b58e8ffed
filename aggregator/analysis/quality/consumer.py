"""Answer quality in the aggregator: evaluation scores and user feedback joined to their calls, detected.

:class:`QualityConsumer` is an analysis consumer (:class:`aggregator.analysis.pipeline.Consumer`). Each
batch's rows go into a :class:`aggregator.analysis.quality.call_index.CallIndex` and
:class:`aggregator.analysis.quality.call_index.ModelVersions`; its ``quality`` events (evaluation results and
feedback the sidecar read from spans and logs) and those posted to ``POST /api/v1/feedback``
(:meth:`submit`) join their call by span id, else trace id: service, request model and user come
from the call's row when the event does not carry them. An event that names neither a known call
nor a service waits up to ``join_wait_s`` for its call's row, then is dropped (counted). Joined
events feed two :class:`aggregator.analysis.detectors.quality_score.QualityScoreDetector` s — evaluations and
feedback — whose candidates get the key's model version (``context.model_version``,
``previous_model_version``, ``model_changed_at``): those a batch raised are returned by
:meth:`~QualityConsumer.consume`, those of events posted to the API go to ``on_candidates`` (the
candidate log and the alert manager, as the pipeline's). State is kept as JSON in
``data_dir/quality.json``; the call index is memory only.

Settings (YAML ``quality:``): see :class:`QualityConfig`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.detectors.quality_score import QualityScoreConfig, QualityScoreDetector
from aggregator.analysis.quality.call_index import DEFAULT_MAX_CALLS, CallIndex, ModelVersions
from aggregator.analysis.state import JsonStateFile
from sentinel.config import ConfigError, load_map
from sentinel.quality import QualityEvent
from sentinel.wire import WireBatch

__all__ = ["FILE_NAME", "FORMAT_VERSION", "QualityConfig", "QualityConsumer", "parse_quality_settings"]

log = logging.getLogger(__name__)

FILE_NAME = "quality.json"
FORMAT_VERSION = 1
#: Feedback is sparser than evaluations: five-minute buckets, a lower z.
FEEDBACK_DEFAULTS: dict[str, Any] = {"bucket_s": 300.0, "lateness_s": 60.0, "min_events": 20, "z_threshold": 3.0}


@dataclass(frozen=True, kw_only=True)
class QualityConfig:
    """Settings of ``quality``: the join and one detector each for evaluations and feedback."""

    enabled: bool = True
    max_calls: int = DEFAULT_MAX_CALLS  # calls remembered for joins (~250 bytes each)
    join_wait_s: float = 60.0  # how long an event without a known call waits for the call's row
    max_pending: int = 10_000  # events waiting for their call, at most (the oldest dropped beyond)
    max_feedback_per_request: int = 1000  # items in one POST /api/v1/feedback
    evaluations: Mapping[str, Any] = field(default_factory=dict)  # QualityScoreConfig settings
    feedback: Mapping[str, Any] = field(default_factory=dict)  # QualityScoreConfig settings over FEEDBACK_DEFAULTS

    def validate(self) -> QualityConfig:
        for name in ("max_calls", "max_pending", "max_feedback_per_request"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"quality.{name}: must be an integer at least 1")
        if not self.join_wait_s >= 0:
            raise ConfigError("quality.join_wait_s: must not be negative")
        self.evaluations_config()
        self.feedback_config()
        return self

    def evaluations_config(self) -> QualityScoreConfig:
        return _score_config(self.evaluations, "quality.evaluations", {})

    def feedback_config(self) -> QualityScoreConfig:
        return _score_config(self.feedback, "quality.feedback", FEEDBACK_DEFAULTS)


def _score_config(raw: Any, section: str, base: Mapping[str, Any]) -> QualityScoreConfig:
    # The loader's rules (sentinel.config.load_map): durations by field kind, errors naming section.<key>.
    return load_map(QualityScoreConfig, {} if raw is None else raw, section, base=base).validate(section)


def parse_quality_settings(settings: Mapping[str, Any] | None) -> QualityConfig:
    """A validated :class:`QualityConfig` from the YAML ``quality:`` map; errors name ``quality.<key>``."""
    raw = {} if settings is None else settings
    if isinstance(raw, Mapping):  # an empty YAML map (``evaluations:``) reads as None: the defaults
        raw = {k: v for k, v in raw.items() if not (k in ("evaluations", "feedback") and v is None)}
    return load_map(QualityConfig, raw, "quality").validate()


class QualityConsumer:
    """Joins quality events to their calls and runs the quality detectors (thread-safe)."""

    def __init__(self, config: QualityConfig, data_dir: str | Path, *,
                 on_candidates: Callable[[list[Candidate]], None] | None = None,
                 clock: Callable[[], int] = time.time_ns, versions: ModelVersions | None = None) -> None:
        self.config = config.validate()
        self.state_file = JsonStateFile(Path(data_dir) / FILE_NAME, version=FORMAT_VERSION, what="quality state")
        self.calls = CallIndex(config.max_calls)
        self.versions = versions if versions is not None else ModelVersions()
        self._evaluations_config = config.evaluations_config()
        self._feedback_config = config.feedback_config()
        self.evaluations = QualityScoreDetector(self._evaluations_config)
        self.feedback = QualityScoreDetector(self._feedback_config)
        #: Where the candidates of events submitted outside the pipeline (the API) go.
        self.on_candidates = on_candidates
        self._clock = clock
        self._pending: deque[tuple[int, QualityEvent]] = deque()
        self._lock = threading.Lock()
        self._dirty = False
        self.received = {"evaluation": 0, "feedback": 0}
        self.joined = 0
        self.dropped_unjoined = 0

    def consume(self, batch: WireBatch, *, arrival_ns: int) -> list[Candidate]:
        self.calls.add_batch(batch.batch)
        self.versions.note_batch(batch.batch)
        return self._handle(batch.quality, arrival_ns)[1]

    def submit(self, events: Sequence[QualityEvent]) -> int:
        """Events from the API (any thread); how many joined a known call (or named a service)."""
        joined, found = self._handle(events, self._clock())
        if found and self.on_candidates is not None:
            self.on_candidates(found)
        return joined

    def _handle(self, events: Sequence[QualityEvent], now_ns: int) -> tuple[int, list[Candidate]]:
        found: list[Candidate] = []
        with self._lock:
            ready: list[QualityEvent] = []
            waiting = list(self._pending)
            self._pending.clear()
            for e in events:
                self.received[e.kind] = self.received.get(e.kind, 0) + 1
            for since, e in [*waiting, *((now_ns, e) for e in events)]:
                joined = self._join(e)
                if joined is not None:
                    ready.append(joined)
                elif now_ns - since <= self.config.join_wait_s * 1e9:
                    self._pending.append((since, e))
                else:
                    self.dropped_unjoined += 1
            while len(self._pending) > self.config.max_pending:
                self._pending.popleft()
                self.dropped_unjoined += 1
            self.joined += len(ready)
            if ready:
                self._dirty = True
                found += self.evaluations.update([e for e in ready if e.kind == "evaluation"])
                found += self.feedback.update([e for e in ready if e.kind == "feedback"])
        return len(ready), [self._with_version(c) for c in found]

    def _join(self, e: QualityEvent) -> QualityEvent | None:
        if e.service is not None and e.model is not None:
            return e
        call = self.calls.find(e.trace_id, e.span_id)
        if call is None:
            return e if e.service is not None else None
        return dataclasses.replace(e, service=e.service or call.service, model=e.model or call.request_model,
                                   user=e.user or call.user)

    def _with_version(self, c: Candidate) -> Candidate:
        extra = self.versions.context(c.service, c.model)
        return dataclasses.replace(c, context={**c.context, **extra}) if extra else c

    @property
    def pending(self) -> int:
        return len(self._pending)

    def series(self, service: str) -> list[dict[str, Any]]:
        """The service's recent quality buckets per (model, evaluation name), for the API and the page."""
        with self._lock:
            return [*self.evaluations.history(service), *self.feedback.history(service)]

    def restore(self, state: Mapping[str, Any] | None) -> None:
        self.evaluations = QualityScoreDetector(self._evaluations_config)
        self.feedback = QualityScoreDetector(self._feedback_config)
        if state is not None:
            evaluations = QualityScoreDetector.from_state(state["evaluations"], self._evaluations_config)
            self.feedback = QualityScoreDetector.from_state(state["feedback"], self._feedback_config)
            self.evaluations = evaluations

    def snapshot(self) -> dict[str, Any] | None:
        with self._lock:
            if not self._dirty:
                return None
            self._dirty = False
            return {"version": FORMAT_VERSION, "evaluations": self.evaluations.to_state(),
                    "feedback": self.feedback.to_state()}

    def shutdown(self) -> None:
        """Nothing to stop."""
