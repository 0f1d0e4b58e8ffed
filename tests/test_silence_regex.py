"""Silence regexes cannot stall the alert path (issue 15, case 12).

``service_name =~ (a|a)*b`` used to backtrack exponentially in Python's ``re``: an alert was delayed
43 s and ``GET /api/v1/alerts`` took 39 s. Patterns are now RE2 (linear time), validated at creation.
"""

from __future__ import annotations

import pytest

from aggregator.alerting.silences import Matcher, SilenceError
from tests.test_api_silences import h  # noqa: F401  (the API harness fixture)
from tests.test_api_support import OPERATOR, Harness


def test_a_pathological_pattern_matches_in_linear_time() -> None:
    # 2**60 paths for a backtracking engine: this would not return (pytest-timeout ends it).
    m = Matcher("service_name", "(a|a)*b", "=~")
    assert not m.matches({"service_name": "a" * 60})
    assert m.matches({"service_name": "a" * 60 + "b"})
    assert Matcher("model", "gpt-4.*|claude-.*", "!~").matches({"model": "llama-3"})


@pytest.mark.parametrize(("pattern", "why"), [
    (r"(a)\1", "invalid escape sequence"),        # backreference: no linear-time match
    (r"(?=a)a", "invalid perl operator"),          # look-ahead
    ("a" * 1025, "longer than 1024 characters"),
    ("(", "missing )"),
])
def test_patterns_re2_cannot_run_are_refused_at_creation(pattern: str, why: str) -> None:
    with pytest.raises(SilenceError, match="is not a valid regex") as e:
        Matcher("service_name", pattern, "=~")
    assert why in str(e.value)


async def test_the_api_refuses_such_a_silence_naming_the_matcher(h: Harness) -> None:  # noqa: F811
    async with h.client(OPERATOR) as c:
        r = await c.post("/api/v1/silences", json={"matchers": [{"name": "service_name", "value": r"(a)\1",
                                                                 "op": "=~"}], "duration": 60})
        assert r.status_code == 400
        assert r.json()["error"].startswith("matchers: service_name=~")
