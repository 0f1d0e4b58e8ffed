"""Refusal and content-filter surges: the share of calls a provider's safety filter stopped.

``finish_reason`` ``content_filter`` (OpenAI, Azure), ``safety`` / ``blocklist`` /
``prohibited_content`` (Gemini) or ``refusal`` (Anthropic) rising well above a key's usual share
means a prompt change, a model update with stricter filtering, or users probing the model — the
answers users get are refusals. The test is :mod:`aggregator.analysis.detectors.finish_length`'s (per
(service, request model) and event-time bucket, a binomial share against the key's baseline share),
on these finish reasons, as ``content_filter`` candidates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from aggregator.analysis.detectors.finish_length import FinishLengthConfig, FinishLengthDetector, Hits, reason_hits
from sentinel.model import FeatureBatch

__all__ = ["FILTER_REASONS", "ContentFilterConfig", "ContentFilterDetector"]

NAME = "content_filter"
#: Finish reasons that mean a safety filter (or the model's refusal) ended the answer.
FILTER_REASONS = frozenset({"content_filter", "safety", "blocklist", "prohibited_content", "spii", "refusal",
                            "recitation"})


@dataclass(frozen=True, kw_only=True)
class ContentFilterConfig(FinishLengthConfig):
    """Settings of ``detectors.content_filter`` (those of ``finish_length``, on filter finish reasons)."""

    section: ClassVar[str] = NAME


class ContentFilterDetector(FinishLengthDetector):
    """Share of calls ended by a content filter or a refusal per bucket vs the key's baseline share."""

    NAME = NAME
    CONFIG = ContentFilterConfig
    hit_label = "filtered"

    def hits(self, batch: FeatureBatch) -> Hits:
        return reason_hits(batch.strings["finish_reason"], FILTER_REASONS)
