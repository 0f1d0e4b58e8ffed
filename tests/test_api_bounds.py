"""Big integers in API parameters are 400s naming the parameter, never 500s (issue 15, case 13)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.test_api_support import VIEWER, Harness, start_api


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with start_api(tmp_path) as harness:
        yield harness


@pytest.mark.parametrize("offset", ["9223372036854775808", "-9223372036854775809", "1" + "0" * 40])
async def test_offset_beyond_64_bits_is_400_naming_it(h: Harness, offset: str) -> None:
    async with h.client(VIEWER) as c:
        r = await c.get("/api/v1/alerts", params={"offset": offset})
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith("offset: ")


async def test_the_largest_offset_is_answered(h: Harness) -> None:
    async with h.client(VIEWER) as c:
        r = await c.get("/api/v1/alerts", params={"offset": str(2**63 - 1)})
    assert r.status_code == 200 and r.json()["alerts"] == []
