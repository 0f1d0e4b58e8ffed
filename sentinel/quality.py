"""Quality signals: evaluation scores and user feedback about LLM calls, as the sidecar forwards them.

A :class:`QualityEvent` is one evaluation result (an LLM-as-judge, hallucination, groundedness,
relevance or toxicity score; the OpenTelemetry GenAI event ``gen_ai.evaluation.result``) or one
piece of user feedback (thumbs up/down, a rating). Scores are normalised to [0, 1]; a label is
kept as given (low cardinality, lower-cased) and classed good or bad by :func:`label_is_bad`.
Free text (an evaluation's explanation, a feedback comment) is never part of the event.

>>> e = QualityEvent(kind="evaluation", name="relevance", score=0.9, time_unix_nano=1)
>>> QualityEvent.from_wire(e.to_wire()) == e
True
>>> label_is_bad("not_relevant"), label_is_bad("pass"), label_is_bad("maybe")
(True, False, None)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BAD_LABELS",
    "FEEDBACK_NAME",
    "GOOD_LABELS",
    "KINDS",
    "LOWER_IS_BETTER",
    "MAX_LABEL_CHARS",
    "MAX_NAME_CHARS",
    "QualityEvent",
    "higher_is_worse",
    "label_is_bad",
    "normalise_name",
]

KINDS = ("evaluation", "feedback")
#: The evaluation name feedback events are tracked under.
FEEDBACK_NAME = "user_feedback"
MAX_NAME_CHARS = 64
MAX_LABEL_CHARS = 64

#: Labels that mean the answer failed the evaluation (or the user did not like it).
BAD_LABELS = frozenset({
    "fail", "failed", "incorrect", "wrong", "not_relevant", "irrelevant", "unrelated", "hallucinated",
    "hallucination", "unfaithful", "ungrounded", "not_grounded", "toxic", "unsafe", "harmful", "bad",
    "negative", "thumbs_down", "thumbsdown", "down", "dislike", "unhelpful", "not_helpful", "no",
    "false", "refused", "refusal",
})
#: Labels that mean it passed.
GOOD_LABELS = frozenset({
    "pass", "passed", "correct", "right", "relevant", "factual", "faithful", "grounded", "not_toxic",
    "non_toxic", "safe", "good", "positive", "thumbs_up", "thumbsup", "up", "like", "helpful", "yes",
    "true",
})
#: Evaluation names (substrings) whose score rises when the answer gets worse.
LOWER_IS_BETTER = ("hallucination", "toxic", "bias", "harm", "pii", "jailbreak", "injection", "refusal")


def normalise_name(name: str) -> str:
    """``"Groundedness Score"`` -> ``"groundedness_score"``, cut to :data:`MAX_NAME_CHARS`."""
    return "_".join(name.strip().lower().replace("-", " ").replace(".", " ").split())[:MAX_NAME_CHARS]


def label_is_bad(label: str | None) -> bool | None:
    """True for a failing label, False for a passing one, None when it says neither."""
    if label is None:
        return None
    key = normalise_name(label)
    if key in BAD_LABELS:
        return True
    if key in GOOD_LABELS:
        return False
    return None


def higher_is_worse(name: str, extra: tuple[str, ...] = ()) -> bool:
    """Whether a rising score of evaluation ``name`` means worse answers (hallucination, toxicity)."""
    return any(part in name for part in (*LOWER_IS_BETTER, *extra))


def _opt_str(v: Any, limit: int) -> str | None:
    return None if v is None else str(v)[:limit]


@dataclass(frozen=True, slots=True, kw_only=True)
class QualityEvent:
    """One evaluation result or feedback about one LLM call (``trace_id`` / ``span_id`` say which).

    ``service`` and ``model`` are set when the sender knew them (the evaluation sat on the LLM
    span itself); otherwise the aggregator joins them from the call's row by span or trace id.
    """

    kind: str
    name: str
    time_unix_nano: int
    score: float | None = None
    label: str | None = None
    service: str | None = None
    model: str | None = None
    trace_id: str | None = None
    span_id: str | None = None
    user: str | None = None
    source: str | None = None  # which convention it came from (gen_ai, openinference, sentinel, api)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if not self.name:
            raise ValueError("name is empty")
        if self.score is not None and not (math.isfinite(self.score) and 0.0 <= self.score <= 1.0):
            raise ValueError(f"score {self.score!r} is not a number in [0, 1]")
        if self.score is None and self.label is None:
            raise ValueError("neither score nor label is set")

    def is_bad(self, extra_worse: tuple[str, ...] = ()) -> bool | None:
        """Whether this result says the answer was bad: its label, or else a score past 0.5."""
        bad = label_is_bad(self.label)
        if bad is not None or self.score is None:
            return bad
        worse_high = higher_is_worse(self.name, extra_worse)
        return self.score > 0.5 if worse_high else self.score < 0.5

    def to_wire(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "t": int(self.time_unix_nano), "score": self.score,
                "label": self.label, "service": self.service, "model": self.model, "trace_id": self.trace_id,
                "span_id": self.span_id, "user": self.user, "source": self.source}

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> QualityEvent:
        """Rebuild from a wire map; raises ``KeyError``/``TypeError``/``ValueError`` on bad input."""
        score = m.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
            raise TypeError("score is not a number")
        t = m["t"]
        if not isinstance(t, int) or isinstance(t, bool):
            raise TypeError("t is not an int")
        return cls(kind=str(m["kind"]), name=normalise_name(str(m["name"])), time_unix_nano=t,
                   score=None if score is None else float(score), label=_opt_str(m.get("label"), MAX_LABEL_CHARS),
                   service=_opt_str(m.get("service"), 256), model=_opt_str(m.get("model"), 256),
                   trace_id=_opt_str(m.get("trace_id"), 64), span_id=_opt_str(m.get("span_id"), 32),
                   user=_opt_str(m.get("user"), 256), source=_opt_str(m.get("source"), 32))
