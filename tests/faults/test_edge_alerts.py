"""Fault 12: an edge sidecar cut off from the aggregator for 60 s pages on its own, then reconciles.

Real processes: a store-and-forward sidecar forwarding through a killable TCP proxy to an
aggregator that has a webhook of its own (the central team's pager). The proxy is killed for 60 s
of real time; an error burst in the middle of it must reach the sidecar's own webhook (an in-process
receiver) within 5 s (sidecar/README.md, Local alerts). Once the path is back the spool replays and
the aggregator must show that alert exactly once, marked ``raised_at_edge``, and must not page its
own webhook for it (aggregator/alerting/README.md, Alerts raised at the edge).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from loadtest.procs import free_port
from loadtest.spans import DEFAULT_MODELS
from tests.faults.conftest import FaultEnv, drained, observe, wait_until

OFFLINE_S = 60.0
BURST_SPANS = 60


class HookReceiver:
    """An HTTP receiver on the fault suite's background loop; records every POSTed JSON body."""

    def __init__(self, faults: FaultEnv, name: str) -> None:
        self.faults = faults
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/{name}"
        self.bodies: list[tuple[float, dict[str, Any]]] = []  # (monotonic arrival, body)
        self._runner: web.AppRunner | None = None

    async def _post(self, request: web.Request) -> web.Response:
        self.bodies.append((time.monotonic(), await request.json()))
        return web.json_response({"ok": True})

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/{name}", self._post)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def start(self) -> HookReceiver:
        self.faults.bg.run(self._start())
        return self

    def stop(self) -> None:
        self.faults.bg.run(self._stop())

    def about(self, service: str) -> list[dict[str, Any]]:
        return [b for _, b in self.bodies if b.get("service_name") == service]


def test_offline_edge_pages_locally_and_the_aggregator_shows_it_once(faults: FaultEnv) -> None:
    edge_hook = HookReceiver(faults, "edge").start()
    central_hook = HookReceiver(faults, "central").start()
    try:
        _run(faults, edge_hook, central_hook)
    finally:
        edge_hook.stop()
        central_hook.stop()


def _run(faults: FaultEnv, edge_hook: HookReceiver, central_hook: HookReceiver) -> None:
    agg = faults.aggregator(config={"webhooks": [{"name": "central", "url": central_hook.url}]}).start()
    proxy = faults.proxy(agg.port)
    sc = faults.sidecar("edge-alerts", aggregator_url=f"http://127.0.0.1:{proxy.port}", mode="store-and-forward",
                        extra=["--local-alert-webhook-url", edge_hook.url]).start()
    ex = faults.exporter(sc, rate_rps=4, spans_per_request=20, error_rate=0.0).start()  # clean background traffic
    time.sleep(3)
    faults.proxy_down(proxy)
    offline_at = time.monotonic()
    time.sleep(8)  # the forwarder has failed a few attempts by now: the sidecar knows it is on its own
    wait_until(lambda: sc.metrics()("sentinel_sidecar_spool_records") > 0, 30,
               "the spool to hold what cannot be forwarded", interval_s=0.5)  # polled: slow under load

    burst_at = time.monotonic()
    [call] = ex.send(1, n_spans=BURST_SPANS, services=["edge-burst"], models=DEFAULT_MODELS[:1], error_rate=0.6)
    assert call.code == "OK"
    wait_until(lambda: edge_hook.about("edge-burst"), 30, "the local alert at the sidecar's own webhook",
               interval_s=0.05)
    arrived_at, page = next((t, b) for t, b in edge_hook.bodies if b.get("service_name") == "edge-burst")
    page_s = arrived_at - burst_at
    assert page["anomaly_type"] == "error_burst" and page["context"]["raised_at_edge"]["offline"] is True
    edge_id = page["alert_id"]

    while time.monotonic() - offline_at < OFFLINE_S:
        time.sleep(0.5)
    spool_peak = sc.metrics()("sentinel_sidecar_spool_records")
    faults.proxy_up(proxy)
    back_at = time.monotonic()

    def shown() -> list[dict[str, Any]]:
        return [a for a in agg.alerts() if a["service_name"] == "edge-burst" and a["anomaly_type"] == "error_burst"]

    wait_until(lambda: bool(shown()), 90, "the edge alert at the aggregator", interval_s=0.2)
    shown_s = time.monotonic() - back_at
    wait_until(lambda: drained(sc), 90, "the spool to drain", interval_s=0.2)
    time.sleep(15)  # past the aggregator's group_wait (10 s): a page of its own would have been sent by now
    ex.stop()
    alerts = shown()
    edge_pages = len(edge_hook.about("edge-burst"))
    central_pages = len(central_hook.about("edge-burst"))
    m = agg.metrics()
    assert len(alerts) == 1, f"the incident is shown once: {[(a['alert_id'], a['context']) for a in alerts]}"
    [alert] = alerts
    mark = alert["context"]["raised_at_edge"]
    assert mark["alert_id"] == edge_id and mark["sidecar"] == "edge-alerts" and mark["paged"] is True
    assert edge_pages == 1, f"the edge paged once: {edge_pages}"
    assert central_pages == 0, f"the aggregator did not page again: {central_hook.bodies}"
    assert page_s <= 5.0, f"the local page took {page_s:.2f} s"
    assert sc.term() == 0
    assert agg.term() == 0
    observe("12 edge store-and-forward sidecar offline 60 s, error burst (60 calls, 60 % errors) at 8 s",
            local_page_s=round(page_s, 2), edge_pages=edge_pages, spool_batches_at_reconnect=int(spool_peak),
            shown_at_aggregator_after_reconnect_s=round(shown_s, 1), aggregator_alerts=len(alerts),
            members=len(alert["members"]), count=alert["count"], central_pages=central_pages,
            edge_alerts_raised=int(m("sentinel_aggregator_edge_alerts_total", outcome="raised")),
            edge_alerts_merged=int(m("sentinel_aggregator_edge_alerts_total", outcome="merged")))
