"""docs/targets.md and loadtest/targets.py agree: every constant is in the table with its figure."""

from __future__ import annotations

from pathlib import Path

from loadtest import targets

DOC = Path(__file__).resolve().parents[1] / "docs" / "targets.md"


def _figure(value: float) -> str:
    return f"{value:,.0f}" if value >= 1000 else f"{value:g}"


def test_every_target_constant_is_in_the_table_with_its_figure() -> None:
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("| ")]
    for name in targets.__all__:
        value = getattr(targets, name)
        (row,) = [r for r in rows if f"`{name}`" in r]
        assert _figure(value) in row, f"docs/targets.md: {name} = {value} but its row says {row!r}"
