"""Plain-text output shared by the benchmarks: aligned summary tables and figure lists."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

__all__ = ["say_figures", "say_table"]

Say = Callable[[str], None]


def say_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], say: Say) -> None:
    """A blank line, ``title``, then ``rows`` under ``headers`` in left-aligned columns."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    say("")
    say(title)
    say("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    say("  ".join("-" * w for w in widths))
    for row in rows:
        say("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def say_figures(title: str, figures: Mapping[str, Any], say: Say, *, key_width: int = 28,
                skip: Collection[str] = ()) -> None:
    """``title`` (when given), then one ``key value`` line per figure; nested maps and ``skip`` left out."""
    if title:
        say(title)
    for k, v in figures.items():
        if k in skip or isinstance(v, dict):
            continue
        if isinstance(v, float):
            text = f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
        else:
            text = f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)
        say(f"  {k:<{key_width}} {text}")
