"""Empty answers: calls that return (almost) no output tokens at a normal latency.

A model that answers with nothing — a broken prompt template, a stop sequence hit at once, a
provider returning empty choices — takes as long as usual and succeeds, so neither the error nor
the latency detectors see it. A call counts when it succeeded with a known output token count;
it is *empty* when it produced at most ``max_output_tokens`` tokens and took at least
``min_latency_ms`` (fast empty answers are cache hits or cancelled calls, not this failure). The
share of empty calls per (service, request model) and event-time bucket is tested against the
key's baseline share as in :mod:`aggregator.analysis.detectors.finish_length`, as ``empty_answer`` candidates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from aggregator.analysis.detectors.finish_length import FinishLengthConfig, FinishLengthDetector, Hits
from aggregator.analysis.detectors.validation import check_min
from sentinel.model import FeatureBatch

__all__ = ["EmptyAnswerConfig", "EmptyAnswerDetector"]

NAME = "empty_answer"
DEFAULT_MAX_OUTPUT_TOKENS = 5.0
DEFAULT_MIN_LATENCY_MS = 100.0


@dataclass(frozen=True, kw_only=True)
class EmptyAnswerConfig(FinishLengthConfig):
    """Settings of ``detectors.empty_answer``: those of ``finish_length`` and what "empty" means."""

    section: ClassVar[str] = NAME

    max_output_tokens: float = DEFAULT_MAX_OUTPUT_TOKENS
    min_latency_ms: float = DEFAULT_MIN_LATENCY_MS

    def validate(self) -> EmptyAnswerConfig:
        super().validate()
        check_min(NAME, "max_output_tokens", self.max_output_tokens, 0)
        check_min(NAME, "min_latency_ms", self.min_latency_ms, 0)
        return self


class EmptyAnswerDetector(FinishLengthDetector):
    """Share of successful calls with near-zero output at a normal latency vs the key's baseline share."""

    NAME = NAME
    CONFIG = EmptyAnswerConfig
    hit_label = "empty"

    def hits(self, batch: FeatureBatch) -> Hits:
        c = self.config
        assert isinstance(c, EmptyAnswerConfig)
        out = batch.numeric["output_tokens"]
        latency = batch.numeric["latency_ms"]
        ok = batch.numeric["is_error"] == 0
        counted = ok & ~np.isnan(out)
        with np.errstate(invalid="ignore"):
            empty = counted & (out <= c.max_output_tokens) & (latency >= c.min_latency_ms)
        return counted.astype(np.float64), empty.astype(np.float64)
