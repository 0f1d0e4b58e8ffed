"""The ingest journal on a full disk (issue 15, case 8): the 503 names the cause, and commits resume
once there is room, without a restart.

SQLite's own size limit (``PRAGMA max_page_count``) makes the real journal fail its commit with
SQLITE_FULL, "database or disk is full", as a full volume does.
"""

from __future__ import annotations

from aggregator.app import Aggregator
from tests.conftest import AggregatorFactory
from tests.test_aggregator_ingest import _body, _post, _value


def _limit_pages(agg: Aggregator, extra_pages: int) -> None:
    conn = agg.ingest.journal._connection()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + extra_pages}")


async def test_full_journal_answers_503_naming_the_cause_and_recovers(make_aggregator: AggregatorFactory) -> None:
    agg = await make_aggregator()
    assert (await _post(agg, _body(1, n=5))).status_code == 200
    _limit_pages(agg, 2)  # 8 KiB more: a batch of 2,000 rows does not fit
    r = await _post(agg, _body(2, n=2_000))
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    error = r.json()["error"]
    assert "database or disk is full" in error and "cannot rollback" not in error
    assert "journal_retention_s" in error
    assert _value(agg, "sentinel_aggregator_journal_full_total") == 1
    _limit_pages(agg, 10_000)  # space was freed
    assert (await _post(agg, _body(2, n=2_000))).status_code == 200, "the retry is stored"
    assert (await _post(agg, _body(3, n=5))).status_code == 200
    assert len(agg.ingest.journal.entries()) == 3
