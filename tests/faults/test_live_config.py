"""Issue 19's done-when: a budget changed on a running aggregator, while traffic flows, without a restart.

A real ``sentinel aggregator`` process is fed through the real ingest path (wire batches POSTed to
``/v1/ingest`` with an ingest token, as a sidecar sends them) by a thread that keeps sending the
whole test long. Its budget is changed with ``sentinel config apply`` (a subprocess, through
``PUT /api/v1/config``) in one test and by rewriting its settings file and sending SIGHUP in the
other; the alerts that follow carry the new limit, the pid is the same one, and the audit log says
who changed what (the principal and the role, never the token).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sentinel import wire
from tests.faults.conftest import AggregatorProc, FaultEnv, wait_until
from tests.test_api_support import batch, traffic

pytestmark = pytest.mark.system

ADMIN, INGEST = "live-admin-token", "live-ingest-token"
SERVICE = "payments"
HIGH, LOW = 1000.0, 2.0  # USD per calendar minute: never reached, reached within seconds


def _settings(limit: float) -> dict[str, Any]:
    return {"admin_tokens": [ADMIN], "tokens": [INGEST],
            "detectors": {"budget": {"limits": {"service": {"minute": limit}}}}}


def _auth(token: str = ADMIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextlib.contextmanager
def _traffic(url: str) -> Iterator[list[int]]:
    """POST a batch of 5 calls of $0.02 each every 0.25 s (about $24 a minute) until the block ends;
    yields the list of HTTP statuses answered so far."""
    statuses: list[int] = []
    stop = threading.Event()

    def send() -> None:
        seq = 0
        with httpx.Client(timeout=10.0) as c:
            while not stop.is_set():
                rows = traffic(SERVICE, time.time_ns(), 5)
                for r in rows:
                    r["cost_usd"] = 0.02
                body = wire.encode(batch(rows).batch, sidecar="live/pod-0", seq=seq)
                with contextlib.suppress(httpx.HTTPError):
                    r = c.post(f"{url}/v1/ingest", content=body,
                               headers={"Content-Type": wire.CONTENT_TYPE, **_auth(INGEST)})
                    statuses.append(r.status_code)
                seq += 1
                stop.wait(0.25)

    thread = threading.Thread(target=send, name="live-config-traffic", daemon=True)
    thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        thread.join(15)


def _budget_alerts(agg: AggregatorProc) -> list[dict[str, Any]]:
    r = httpx.get(f"{agg.url}/api/v1/alerts", params={"limit": 1000, "anomaly_type": "budget_exceeded"},
                  headers=_auth(), timeout=10.0)
    r.raise_for_status()
    return [a for a in r.json()["alerts"] if a["service_name"] == SERVICE]


def _audit(agg: AggregatorProc, action: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{agg.url}/api/v1/audit", params={"action": action}, headers=_auth(), timeout=10.0)
    r.raise_for_status()
    return list(r.json()["entries"])


def _start(faults: FaultEnv) -> AggregatorProc:
    agg = faults.aggregator(config=_settings(HIGH))
    agg.start()
    return agg


def _traffic_flows(statuses: list[int]) -> None:
    seen = len(statuses)
    wait_until(lambda: statuses[seen:].count(200) >= 4, 60, "ingest to accept more batches")


def test_sentinel_config_apply_changes_a_budget_while_traffic_flows(faults: FaultEnv, tmp_path: Path) -> None:
    agg = _start(faults)
    pid = agg.pid
    with _traffic(agg.url) as statuses:
        _traffic_flows(statuses)
        time.sleep(2.0)  # a few dollars spent this minute: far under the $1000 limit
        assert _budget_alerts(agg) == []

        live = tmp_path / "budget.yaml"
        live.write_text(json.dumps({"aggregator": {"detectors": {"budget": {"limits": {"service": {"minute": LOW}}}},
                                                   "listen": "0.0.0.0:1"}}))
        applied_at = time.time_ns()
        r = subprocess.run([sys.executable, "-m", "sentinel.cli", "config", "--url", agg.url, "apply", str(live),
                            "--comment", "payments budget"], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "SENTINEL_API_TOKEN": ADMIN})
        assert r.returncode == 0, r.stdout + r.stderr
        assert "detectors:" in r.stdout and "version 2" in r.stdout
        assert "listen: not applied (restart needed for listen)" in r.stderr

        # The next minute's alerts follow it: the spend of the running minute passes $2 within seconds.
        wait_until(lambda: bool(_budget_alerts(agg)), 90, "a budget_exceeded alert under the new limit")
        _traffic_flows(statuses)  # still flowing: nothing was restarted or paused
    alerts = _budget_alerts(agg)  # one per minute (budget period) since the change
    minute = 60 * 10**9
    for alert in alerts:
        assert alert["context"]["limit_usd"] == LOW
        assert alert["context"]["window_start"] >= applied_at // minute * minute  # the minute of the change, or later
    assert agg.running() and agg.pid == pid  # the same process, never restarted

    (apply,) = _audit(agg, "config.apply")
    assert (apply["who"], apply["role"]) == ("admin_tokens[0]", "admin")
    (version,) = _audit(agg, "config.version")
    assert version["detail"] == {"keys": ["detectors"], "comment": "payments budget"}
    assert (version["who"], version["role"]) == ("admin_tokens[0]", "admin")
    assert ADMIN not in json.dumps(apply) + json.dumps(version)
    assert agg.term() == 0


def test_sighup_applies_a_changed_detector_map(faults: FaultEnv) -> None:
    agg = _start(faults)
    pid = agg.pid
    with _traffic(agg.url) as statuses:
        _traffic_flows(statuses)
        assert _budget_alerts(agg) == []
        assert agg.config_path is not None
        settings = _settings(LOW)
        settings["save_interval_s"] = 30  # not live: reported, the running value kept
        agg.config_path.write_text(json.dumps({"aggregator": settings}))
        agg.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload: applied detectors" in agg.log(), 60, "the reload to apply the detectors")
        assert "restart needed for save_interval_s" in agg.log()
        wait_until(lambda: bool(_budget_alerts(agg)), 90, "a budget_exceeded alert under the reloaded limit")
        assert _budget_alerts(agg)[0]["context"]["limit_usd"] == LOW

        # An invalid detector map is refused whole, naming the key; the running one is kept.
        settings["detectors"] = {"budget": {"limits": {"service": {"fortnight": 1.0}}}}
        agg.config_path.write_text(json.dumps({"aggregator": settings}))
        agg.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in agg.log(), 60, "the invalid reload to be refused")
        assert "detectors.budget.limits.service.fortnight" in agg.log()
        _traffic_flows(statuses)
    assert agg.running() and agg.pid == pid
    (version,) = _audit(agg, "config.version")
    assert (version["who"], version["role"], version["detail"]["keys"]) == ("SIGHUP", "process", ["detectors"])
    assert agg.term() == 0

