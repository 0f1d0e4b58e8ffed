"""Regular expressions from operators (silence matchers), matched in linear time with RE2.

Python's ``re`` backtracks: ``(a|a)*b`` against a 40-character value takes seconds, and an
operator's silence is matched against every new alert and on every ``GET /api/v1/alerts``
(issue 15, case 12: 43 s of delay). RE2 (``google-re2``) matches in time linear in the value,
with bounded memory (``MAX_MEM_BYTES`` per pattern), and refuses at creation what it cannot do
that way (backreferences, look-around), so a pattern that is accepted is safe to run.
"""

from __future__ import annotations

import functools
from typing import Any

import re2  # type: ignore[import-untyped]

__all__ = ["MAX_MEM_BYTES", "MAX_PATTERN_CHARS", "RegexError", "compile_pattern", "fullmatch"]

#: Longer patterns are refused (a silence matcher is a name or an alternation of a few).
MAX_PATTERN_CHARS = 1024
#: RE2's memory budget for one compiled pattern; a pattern that needs more is refused at creation.
MAX_MEM_BYTES = 1 << 20


class RegexError(ValueError):
    """The pattern cannot be used; the message says why."""


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # the error is raised to the caller, not written to stderr
    options.max_mem = MAX_MEM_BYTES
    options.never_capture = True
    return options


@functools.lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> Any:
    """The compiled pattern; :class:`RegexError` naming the problem when RE2 refuses it.

    >>> compile_pattern("gpt-4.*").fullmatch("gpt-4o") is not None
    True
    """
    if len(pattern) > MAX_PATTERN_CHARS:
        raise RegexError(f"longer than {MAX_PATTERN_CHARS} characters")
    try:
        return re2.compile(pattern, _options())
    except re2.error as e:
        detail = e.args[0] if e.args else e
        raise RegexError(detail.decode("utf-8", "replace") if isinstance(detail, bytes) else str(detail)) from None


def fullmatch(pattern: str, value: str) -> bool:
    """Whether ``pattern`` matches the whole of ``value`` (``pattern`` was accepted by :func:`compile_pattern`)."""
    return compile_pattern(pattern).fullmatch(value) is not None
