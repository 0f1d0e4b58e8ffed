"""The aggregator's web page in a real browser: Debian's chromium driven by Playwright (no browser download).

A real aggregator (``make_aggregator``) serves the page; traffic goes in through ``POST /v1/ingest``
and an anomaly through the alert manager (``agg.alerts.emit``, the call every detector makes) while
the page is open. The page must show it live, without a reload. CI installs chromium with
``scripts/ci_browser.sh``; without ``/usr/bin/chromium`` the browser tests are skipped.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, Request, async_playwright, expect

from aggregator.alerting.store import AlertQuery
from aggregator.analysis.detectors.candidate import ANOMALY_TYPES, Candidate
from aggregator.app import Aggregator
from sentinel import wire
from sentinel.alert_rules import BASE_SEVERITY
from sentinel.model import COLUMNS, FeatureBatch
from tests.conftest import AggregatorFactory

# A real browser (the system tier, `make test-system`).
pytestmark = pytest.mark.system

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
# Headless, and nothing that calls home: without these chromium floods a closed network with retries.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 10_000  # every wait is on an event or a DOM state, bounded by this
SERVICE = "checkout"
MINUTE_NS = 60 * 10**9

needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(),
                                    reason="no /usr/bin/chromium (CI installs it: scripts/ci_browser.sh)")


def _row(t: int, i: int, rng: random.Random) -> tuple[Any, ...]:
    values: dict[str, Any] = dict.fromkeys(COLUMNS)
    latency = rng.lognormvariate(6.5, 0.3)
    output = float(rng.randint(50, 400))
    values.update(time_unix_nano=t, service=SERVICE, request_model="gpt-4o", response_model="gpt-4o",
                  operation="chat", region="eu-west-1", latency_ms=latency, ttft_ms=latency / 4,
                  input_tokens=float(rng.randint(200, 900)), output_tokens=output,
                  tokens_per_s=output / (latency / 1000), cost_usd=rng.uniform(0.001, 0.004), is_error=0,
                  user=f"user-{i % 5}", trace_id=f"{rng.getrandbits(128):032x}", span_id=f"{i:016x}")
    return tuple(values[name] for name in COLUMNS)


async def _ingest(agg: Aggregator, minutes: int = 20, per_minute: int = 10, token: str = "") -> None:
    """``minutes`` of ordinary traffic of SERVICE, one batch per minute.

    The newest rows are 25 s ahead of now: the charted range ends with the minute of the newest event,
    so an alert raised in the next few seconds falls inside it whatever the minute boundary.
    """
    rng = random.Random(7)
    end = time.time_ns() + 30 * 10**9
    headers = {"Content-Type": wire.CONTENT_TYPE}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with httpx.AsyncClient() as client:
        for seq, m in enumerate(range(minutes, 0, -1)):
            start = end - m * MINUTE_NS
            rows = [_row(start + k * MINUTE_NS // per_minute, seq * per_minute + k, rng) for k in range(per_minute)]
            body = wire.encode(FeatureBatch.from_rows(rows), sidecar="web-test", seq=seq)
            r = await client.post(f"{agg.url}/v1/ingest", content=body, headers=headers)
            assert r.status_code == 200, r.text


def _latency_spike(user: str = "alice") -> Candidate:
    now = time.time_ns()
    return Candidate(anomaly_type="latency_spike", service=SERVICE, model="gpt-4o",
                     detection_method="local_zscore+global_p99", confidence=0.95, metric="latency_ms",
                     value=4200.0, baseline=850.0, threshold=2000.0, deviation_sigma=7.3,
                     window_start=now - MINUTE_NS, window_end=now,
                     context={"trace_ids": ["4bf92f3577b34da6a3ce929d0e0e4736"], "user": user,
                              "region": "eu-west-1"})


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


class PageErrors:
    """Script errors, console errors (CSP violations among them) and failed requests of one page."""

    def __init__(self, page: Page, base_url: str) -> None:
        self.items: list[str] = []
        self.stream_url = f"{base_url}/api/v1/stream"
        page.on("pageerror", lambda e: self.items.append(f"pageerror: {e}"))
        page.on("console", self._console)
        page.on("requestfailed", self._failed)

    def _failed(self, request: Request) -> None:
        # The page aborts its stream on purpose (new filters, a new token, a reload).
        if not (request.url.startswith(self.stream_url) and request.failure == "net::ERR_ABORTED"):
            self.items.append(f"requestfailed: {request.url} {request.failure}")

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            self.items.append(f"console: {msg.text}")

    def without_http_status(self, *codes: int) -> list[str]:
        """The errors but chromium's "Failed to load resource: ... status of 401" lines for ``codes``."""
        pattern = re.compile(r"status of (" + "|".join(str(c) for c in codes) + r")\b")
        return [e for e in self.items if not pattern.search(e)]


async def _open(browser: Browser, base_url: str) -> tuple[Page, PageErrors]:
    page = await browser.new_page(viewport={"width": 1400, "height": 900})
    errors = PageErrors(page, base_url)
    await page.goto(f"{base_url}/")
    return page, errors


async def _wait_live(page: Page) -> None:
    await expect(page.get_by_test_id("alert-feed")).to_have_attribute("data-state", "loaded", timeout=WAIT_MS)
    await expect(page.get_by_test_id("stream-status")).to_have_attribute("data-state", "live", timeout=WAIT_MS)


@needs_chromium
async def test_alert_appears_live_with_detail_health_and_charts(make_aggregator: AggregatorFactory,
                                                                browser: Browser) -> None:
    agg = await make_aggregator(grpc_listen="")
    await _ingest(agg)
    page, errors = await _open(browser, agg.url)
    await _wait_live(page)
    card = page.locator(f'[data-testid="service-card"][data-service="{SERVICE}"]')
    await expect(card).to_be_visible(timeout=WAIT_MS)
    await expect(card).to_have_attribute("data-status", "ok")
    await expect(page.get_by_test_id("alert-row")).to_have_count(0)
    charts = page.get_by_test_id("service-charts")  # the only service is selected by itself
    await expect(charts).to_have_attribute("data-state", "loaded", timeout=WAIT_MS)
    assert int(await charts.get_attribute("data-points") or 0) >= 20
    await page.evaluate("window.__sameDocument = true")

    await asyncio.to_thread(agg.alerts.emit, [_latency_spike()])

    row = page.locator('[data-testid="alert-row"][data-anomaly-type="latency_spike"]')
    await expect(row).to_have_count(1, timeout=WAIT_MS)
    await expect(row).to_have_attribute("data-service", SERVICE)
    await expect(row).to_have_attribute("data-status", "open")
    alert_id = await row.get_attribute("data-alert-id")
    stored, total = agg.alert_store.query(AlertQuery(limit=10))
    assert total == 1 and stored[0].alert_id == alert_id
    severity = stored[0].severity
    assert await page.evaluate("window.__sameDocument === true"), "the page reloaded"
    # The header counts, the health card and the charts follow the event without a reload.
    await expect(page.get_by_test_id(f"count-{severity}")).to_have_text("1", timeout=WAIT_MS)
    await expect(card).to_have_attribute("data-status", "critical" if severity in ("critical", "high") else "warning",
                                         timeout=WAIT_MS)
    await expect(charts).to_have_attribute("data-alerts", "1", timeout=WAIT_MS)
    await expect(page.locator(f'[data-testid="chart-marker"][data-alert-id="{alert_id}"]')).to_be_visible()

    await row.click()
    detail = page.get_by_test_id("alert-detail")
    await expect(detail).to_have_attribute("data-alert-id", alert_id or "", timeout=WAIT_MS)
    await expect(page.get_by_test_id("detail-value")).to_have_text("4,200 ms")
    await expect(page.get_by_test_id("detail-baseline")).to_have_text("850 ms")
    await expect(page.get_by_test_id("detail-threshold")).to_have_text("2,000 ms")
    await expect(page.get_by_test_id("detail-sigma")).to_contain_text("+7.3 σ")
    await expect(page.get_by_test_id("detail-context")).to_contain_text("alice")
    await expect(page.get_by_test_id("detail-context")).to_contain_text("4bf92f3577b34da6a3ce929d0e0e4736")
    await expect(page.get_by_test_id("detail-remediation").locator("li")).not_to_have_count(0)
    await expect(page.get_by_test_id("detail-runbook")).to_have_attribute(
        "href", re.compile(r"/static/runbooks\.html#latency_spike$"))

    # Without tokens the page may acknowledge; the update comes back through the stream as well.
    await page.get_by_test_id("ack-button").click()
    await expect(page.get_by_test_id("detail-status")).to_have_text("acknowledged", timeout=WAIT_MS)
    await expect(row).to_have_attribute("data-status", "acknowledged", timeout=WAIT_MS)

    # False-positive feedback: stored with who, shown with the type's precision.
    await page.get_by_test_id("feedback-false_positive").click()
    message = page.get_by_test_id("feedback-message")
    await expect(message).to_contain_text("Judged a false positive by anonymous", timeout=WAIT_MS)
    await expect(message).to_contain_text("0 %")
    await expect(page.get_by_test_id("feedback-false_positive")).to_have_attribute("aria-pressed", "true")
    given = agg.api.feedback.log.of_alert(alert_id or "") if agg.api is not None else []
    assert [f.verdict for f in given] == ["false_positive"]
    # The audit log shows the acknowledgement and the verdict (no tokens: the page is admin).
    await page.locator("#audit summary").click()
    await expect(page.locator('[data-testid="audit-row"][data-action="alert.feedback"]')).to_have_count(
        1, timeout=WAIT_MS)
    await expect(page.locator('[data-testid="audit-row"][data-action="alert.acknowledge"]')).to_have_count(1)

    await expect(page.get_by_test_id("load-more")).to_be_hidden()  # the one alert there is, is shown

    ARTIFACTS.mkdir(exist_ok=True)
    await page.evaluate("window.scrollTo(0, 0)")  # sticky header and detail where a reader expects them
    await page.screenshot(path=str(ARTIFACTS / "web_page.png"), full_page=True)
    assert errors.items == []


@needs_chromium
async def test_token_prompt_then_live_feed_and_ack_refused_for_viewer(make_aggregator: AggregatorFactory,
                                                                      browser: Browser) -> None:
    agg = await make_aggregator(viewer_tokens=["viewer-secret"], tokens=["ingest-secret"], grpc_listen="")
    await _ingest(agg, minutes=5, token="ingest-secret")
    page, errors = await _open(browser, agg.url)

    panel = page.get_by_test_id("token-panel")
    await expect(panel).to_be_visible(timeout=WAIT_MS)
    await expect(page.get_by_test_id("stream-status")).to_have_attribute("data-state", "auth", timeout=WAIT_MS)
    await page.get_by_test_id("token-input").fill("not-a-token")
    await page.get_by_test_id("token-submit").click()
    await expect(panel).to_contain_text("refused", timeout=WAIT_MS)

    await page.get_by_test_id("token-input").fill("viewer-secret")
    await page.get_by_test_id("token-submit").click()
    await expect(panel).to_be_hidden()
    await _wait_live(page)
    assert await page.evaluate("sessionStorage.getItem('sentinel.token')") == "viewer-secret"
    await expect(page.locator(f'[data-testid="service-card"][data-service="{SERVICE}"]')).to_be_visible()

    await asyncio.to_thread(agg.alerts.emit, [_latency_spike()])
    row = page.locator('[data-testid="alert-row"][data-anomaly-type="latency_spike"]')
    await expect(row).to_have_count(1, timeout=WAIT_MS)
    await row.click()
    await page.get_by_test_id("ack-button").click()
    message = page.get_by_test_id("ack-message")
    await expect(message).to_contain_text("403", timeout=WAIT_MS)
    await expect(message).to_contain_text("operator")
    await expect(page.get_by_test_id("detail-status")).to_have_text("open")

    # The token survives a reload of the tab (sessionStorage): no prompt the second time.
    await page.reload()
    await _wait_live(page)
    await expect(panel).to_be_hidden()
    await expect(row).to_have_count(1)
    assert errors.without_http_status(401, 403) == []


async def test_page_files_headers_and_runbook_sections(make_aggregator: AggregatorFactory) -> None:
    agg = await make_aggregator(viewer_tokens=["viewer-secret"], grpc_listen="")
    async with httpx.AsyncClient(base_url=agg.url) as client:
        index = await client.get("/")  # public, like /static: only the API behind it needs the token
        assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in index.headers["content-security-policy"]
        for path in ("/static/app.js", "/static/style.css", "/static/vendor/uPlot.iife.min.js",
                     "/static/vendor/uPlot.min.css", "/static/vendor/uPlot.LICENSE"):
            r = await client.get(path)
            assert r.status_code == 200, path
            assert r.headers["x-content-type-options"] == "nosniff"
        for path in ("/static/", "/static/missing.js", "/static/..%2f__init__.py", "/static/.hidden"):
            assert (await client.get(path)).status_code == 404, path
        assert (await client.get("/api/v1/alerts")).status_code == 401
        runbooks = await client.get("/static/runbooks.html")
        assert runbooks.status_code == 200
    for anomaly_type in sorted(set(ANOMALY_TYPES) | set(BASE_SEVERITY)):
        assert f'<section class="panel rb" id="{anomaly_type}"' in runbooks.text, anomaly_type
        assert f'href="#{anomaly_type}"' in runbooks.text, anomaly_type
